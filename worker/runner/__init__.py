"""The worker's running parts, wired together by worker.app.Worker:

- input_loop: fetch → process in the database thread → settle acks → retry transient
  faults; reconnection and rewind of the consumer.
- outbox_relay: publish what a transaction committed, drain the outbox when behind.
- held_timer: release held events that waited too long.
- parked_retries: `roomserver retry` requests and the retry of parked rooms at start.
- common: the database thread, the NATS link, progress, and small helpers they share.
"""
