"""The worker's running parts, wired together by worker.app.Worker:

- input_loop: fetch → process in the pipeline → settle acks → retry transient
  faults; reconnection and rewind of the consumer.
- pipeline_handle, pipeline_process, pipeline_server: the pipeline behind requests, in
  a process of its own (or in a database thread of this one, for tests).
- outbox_relay: publish what a transaction committed, drain the outbox when behind.
- held_timer: release held events that waited too long.
- parked_retries: `roomserver retry` requests and the retry of parked rooms at start.
- common: a thread for blocking work, the NATS link, progress, and small helpers they share.
"""
