"""The API process: serves HTTP and /ws on the supervisor's socket, runs the periodic jobs,
and answers the supervisor's internal routes."""
