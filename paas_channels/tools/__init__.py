"""The operator's commands: ``check`` (will it run?), ``status`` (how busy is it?) and the deploy files they read."""
