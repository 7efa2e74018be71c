-- Reverses 0001. The outbox schema itself stays: it holds golang-migrate's
-- version table. The inbox schema is dropped only when nothing else lives in it.
DROP TABLE IF EXISTS {{.Outbox}}.legal_holds;
DROP VIEW IF EXISTS {{.Inbox}}.dead_letters_by_consumer;
DROP VIEW IF EXISTS {{.Outbox}}.attempt_history;
DROP VIEW IF EXISTS {{.Outbox}}.expired_leases;
DROP VIEW IF EXISTS {{.Outbox}}.blocked_lanes;
DROP VIEW IF EXISTS {{.Outbox}}.parked_messages;
DROP VIEW IF EXISTS {{.Outbox}}.backlog;
DROP TABLE IF EXISTS {{.Inbox}}.dead_letter_requests;
DROP TABLE IF EXISTS {{.Inbox}}.attempts;
DROP TABLE IF EXISTS {{.Inbox}}.dead_letters;
DROP TABLE IF EXISTS {{.Inbox}}.lanes;
DROP TABLE IF EXISTS {{.Inbox}}.processed;
DROP SCHEMA IF EXISTS {{.Inbox}} RESTRICT;
DROP TABLE IF EXISTS {{.Outbox}}.approvals;
DROP TABLE IF EXISTS {{.Outbox}}.settings;
DROP TABLE IF EXISTS {{.Outbox}}.audit_log;
DROP FUNCTION IF EXISTS {{.Outbox}}.audit_log_append_only();
DROP TABLE IF EXISTS {{.Outbox}}.topic_policies;
DROP TABLE IF EXISTS {{.Outbox}}.attempts;
DROP TABLE IF EXISTS {{.Outbox}}.error_classes;
DROP TABLE IF EXISTS {{.Outbox}}.lanes;
DROP TABLE IF EXISTS {{.Outbox}}.scheduled;
DROP TABLE IF EXISTS {{.Outbox}}.messages;
DROP TABLE IF EXISTS {{.Outbox}}.relays;
DROP TABLE IF EXISTS {{.Outbox}}.partitions;
DROP FUNCTION IF EXISTS {{.Outbox}}.duplicate_event(uuid);
DROP FUNCTION IF EXISTS {{.Outbox}}.partition_for(text);
