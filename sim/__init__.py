"""The simulator on top of the topology: workloads, processors, runs, reports, benchmarks
and the ``ringflow`` command."""
