"""The one JSON-over-unix-socket channel: the supervisor's control server and its client."""
