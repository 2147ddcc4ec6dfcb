"""How each process runs: boot (settings, logging, the layer probe), and one module per mode.

* :mod:`.boot` — what every process does at start and exit;
* :mod:`.web` — ``paas-channels run web``, the interface server on Daphne;
* :mod:`.combined` — ``run --combined``: the interface and worker threads in one process;
* :mod:`.wsgi` — ``run wsgi``: plain WSGI on gevent;
* :mod:`.access` — the access log, one line per HTTP request in every mode.

(``run worker`` is :func:`paas_channels.worker.run`, beside the worker it runs.)
"""
