// Package chaos is outboxkit's fault-injection soak: a test program (its
// tests are the program; this package has no code of its own) that runs
// producers, several relay processes and inbox consumers against the real
// PostgreSQL, an in-process Kafka-protocol broker and the local RabbitMQ,
// injects faults (SIGKILL, SIGSTOP past the lease, network cuts, partitions
// and latency through in-process toxiproxy proxies, terminated database
// sessions, a long-running transaction, lost NOTIFY), and then proves the
// guarantees with an independent checker that reads the database and the
// brokers.
//
//	go test ./internal/chaos                                  # one pass over every fault kind (CI)
//	go test ./internal/chaos -run Chaos -soak 30m -timeout 45m -v  # a long soak
//
// See docs/reliability.md for the fault kinds, the invariants and the
// figures of recorded runs.
package chaos
