"""meshd: the Agent Mesh API daemon.

Serves the Node.js Agent Mesh wire contract and supervises itself (watchdog, backups, recovery).
"""

__version__ = "0.1.0"
