"""The Django project the WebSocket scenarios serve: the same consumer written for
paas-channels (``routing.py``, ``settings.py``) and for Channels 4 (``channels4.py``,
``settings_channels4.py``), each configured with its framework's defaults."""
