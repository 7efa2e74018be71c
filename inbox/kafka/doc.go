// Package kafka feeds an inbox from Kafka: a consumer group on
// segmentio/kafka-go that hands every record to inbox.(*Inbox).HandleBatch
// and commits a partition's offset only after the inbox transaction that
// settled its records committed.
//
//	in, err := inbox.New(pool, &inbox.Config{Consumer: "billing", ConsumerVersion: version})
//	...
//	in.Register("payout.created", 1, applyPayout)
//	c, err := kafka.New(in, kafka.Config{Brokers: brokers, Topics: []string{"payments"}})
//	...
//	err = c.Run(ctx) // until ctx ends
//
// # How records flow
//
// Each assigned partition has its own loop (partitions in parallel, one
// partition's records strictly in offset order, so one key's events in
// order): a reader fetches records into a buffer of BatchSize; the loop
// takes what is buffered, up to BatchSize, and hands it to HandleBatch,
// which applies a run of in-order events in one transaction and falls back
// to one transaction per event (with retries, parks, the order guard) for
// anything else. Every Outcome settles its record; the offset after the
// last settled record is committed every CommitInterval and when the
// partition is given up.
//
// A crash replays the records after the last committed offset: the inbox
// finds their processed records and skips them (Outcome Duplicate). A
// record that fails is retried inside HandleBatch while its partition
// waits (bounded by inbox.Config.MaxAttempts and BackoffMax), then parked;
// its key's later records are parked as blocked behind it and the partition
// moves on. While the inbox's breaker is open, the partition loops wait in
// HandleBatch, the buffers fill and fetching stops.
//
// The record key is not used for ordering: the inbox orders by the
// CloudEvents attributes ce_partitionkey and ce_sequence that the relay
// writes (the relay also uses the key as record key, so a key's events
// share a partition). Records without CloudEvents headers are parked raw.
//
// # Rebalances and stops
//
// The group is kafka-go's ConsumerGroup: each generation starts one loop
// per assigned partition; when the generation ends (another member joins or
// leaves, or Run's ctx ends) the loops roll back their transactions in
// flight, commit what they settled and return before the group rejoins.
// Records settled after the last commit are delivered again to the new
// owner, whose inbox skips them as duplicates.
package kafka
