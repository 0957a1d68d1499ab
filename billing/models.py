"""Usage counters, latency histograms and the cost model live here (see the
billing issue). Actor awake time is recorded by ``rooms.models.ActorRun``."""
