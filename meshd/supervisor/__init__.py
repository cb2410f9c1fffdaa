"""The watchdog process: the loop, restart policy, maintenance, sd_notify, alerts and the
protocol actions. It reaches the worker only through processes and sockets."""
