-- outboxkit database roles: least privilege for each component.
--
-- Rendered by package migrations (outboxkit migrate roles): .Outbox and
-- .Inbox are the quoted schemas, .Prefix the role name prefix. The roles are
-- NOLOGIN groups: grant them to your login roles, e.g.
--   GRANT outboxkit_producer TO payments_app;
-- Safe to run again after every upgrade (CREATE ROLE only when missing,
-- GRANT is idempotent).

DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY[{{q "producer"}}, {{q "relay"}}, {{q "consumer"}}, {{q "sweeper"}}, {{q "operator"}}, {{q "auditor"}}]
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;

GRANT USAGE ON SCHEMA {{.Outbox}}, {{.Inbox}} TO {{r "producer"}}, {{r "relay"}}, {{r "consumer"}}, {{r "sweeper"}}, {{r "operator"}}, {{r "auditor"}};
GRANT EXECUTE ON FUNCTION {{.Outbox}}.partition_for(text), {{.Outbox}}.duplicate_event(uuid)
    TO {{r "producer"}}, {{r "relay"}}, {{r "operator"}};

-- Producer: enqueue only. It cannot read payloads or change stored events.
GRANT INSERT ON {{.Outbox}}.messages, {{.Outbox}}.scheduled TO {{r "producer"}};
GRANT SELECT (event_id) ON {{.Outbox}}.messages, {{.Outbox}}.scheduled TO {{r "producer"}};
GRANT INSERT, UPDATE (last_sequence, last_enqueued_at) ON {{.Outbox}}.lanes TO {{r "producer"}};
GRANT SELECT (topic, key, last_sequence, hold_until) ON {{.Outbox}}.lanes TO {{r "producer"}};
GRANT SELECT (idle, alive_until) ON {{.Outbox}}.relays TO {{r "producer"}};

-- Relay: reads and marks events, holds leases, promotes delayed events,
-- appends park entries to the audit log. It never deletes an event and
-- never reads or changes the audit log.
GRANT SELECT, INSERT, UPDATE ON {{.Outbox}}.messages TO {{r "relay"}};
GRANT SELECT, UPDATE ON {{.Outbox}}.partitions TO {{r "relay"}};
GRANT SELECT, INSERT, UPDATE, DELETE ON {{.Outbox}}.relays TO {{r "relay"}};
GRANT SELECT, INSERT, UPDATE ON {{.Outbox}}.lanes TO {{r "relay"}};
GRANT SELECT, UPDATE, DELETE ON {{.Outbox}}.scheduled TO {{r "relay"}};
GRANT SELECT ON {{.Outbox}}.topic_policies, {{.Outbox}}.error_classes TO {{r "relay"}};
GRANT INSERT ON {{.Outbox}}.attempts, {{.Outbox}}.audit_log TO {{r "relay"}};

-- Consumer (inbox): records what it applied, parks what it cannot apply.
-- outboxkit dlq ingest (copying broker dead letters into dead_letters)
-- needs exactly these privileges too: run it as a consumer login.
GRANT SELECT, INSERT, UPDATE ON {{.Inbox}}.processed, {{.Inbox}}.lanes, {{.Inbox}}.dead_letters, {{.Inbox}}.attempts TO {{r "consumer"}};
GRANT SELECT ON {{.Outbox}}.error_classes TO {{r "consumer"}};
GRANT INSERT ON {{.Outbox}}.audit_log TO {{r "consumer"}};
-- It runs the operators' requests on its dead letters and records their
-- outcome; it never creates one.
GRANT SELECT, UPDATE (status, done_at, done_by, outcome) ON {{.Inbox}}.dead_letter_requests TO {{r "consumer"}};

-- Sweeper: recovery and retention. The only role that deletes rows, and
-- only published events, their attempts, inbox records and dead relays.
GRANT SELECT, UPDATE, DELETE ON {{.Outbox}}.messages TO {{r "sweeper"}};
GRANT SELECT, UPDATE ON {{.Outbox}}.partitions, {{.Outbox}}.lanes TO {{r "sweeper"}};
GRANT SELECT, DELETE ON {{.Outbox}}.relays, {{.Outbox}}.attempts TO {{r "sweeper"}};
GRANT SELECT ON {{.Outbox}}.scheduled, {{.Outbox}}.topic_policies, {{.Outbox}}.error_classes TO {{r "sweeper"}};
GRANT INSERT ON {{.Outbox}}.audit_log TO {{r "sweeper"}};
GRANT SELECT, DELETE ON {{.Inbox}}.processed TO {{r "sweeper"}};
GRANT SELECT ON {{.Inbox}}.dead_letters, {{.Inbox}}.lanes TO {{r "sweeper"}};

-- Operator: the dead-letter actions (replay, drop, restore, edit, lanes),
-- every one audited, including the replay of ingested broker dead letters.
-- It cannot delete anything.
GRANT SELECT, INSERT, UPDATE ON {{.Outbox}}.messages, {{.Outbox}}.lanes TO {{r "operator"}};
GRANT SELECT, INSERT, UPDATE ON {{.Outbox}}.topic_policies TO {{r "operator"}};
GRANT SELECT, INSERT ON {{.Outbox}}.audit_log TO {{r "operator"}};
GRANT SELECT ON ALL TABLES IN SCHEMA {{.Outbox}}, {{.Inbox}} TO {{r "operator"}};
GRANT UPDATE ON {{.Inbox}}.dead_letters, {{.Inbox}}.lanes TO {{r "operator"}};
-- Requests on inbox dead letters for their consumer to run (replay, edit,
-- release after a drop); a drop or restore cancels the pending ones.
GRANT INSERT, UPDATE (status, done_at, done_by, outcome) ON {{.Inbox}}.dead_letter_requests TO {{r "operator"}};
-- The two-person rule: operators ask for and decide approvals; what an
-- approval runs (refs, payload, requester) cannot change once asked. The
-- settings (the rule itself) are the owner's: operators only read them.
GRANT INSERT, UPDATE (status, decided_by, decided_login, decided_at, decision_reason, done_at, result)
    ON {{.Outbox}}.approvals TO {{r "operator"}};

-- Auditor: reads everything, writes nothing.
GRANT SELECT ON ALL TABLES IN SCHEMA {{.Outbox}}, {{.Inbox}} TO {{r "auditor"}};

-- Privacy: legal holds and redaction. The operator places and releases
-- holds (never deletes one); the sweeper reads them, and may change only the
-- redacted columns of dead letters.
GRANT SELECT, INSERT ON {{.Outbox}}.legal_holds TO {{r "operator"}};
GRANT UPDATE (released_at, released_by, release_reason) ON {{.Outbox}}.legal_holds TO {{r "operator"}};
GRANT SELECT ON {{.Outbox}}.legal_holds TO {{r "sweeper"}}, {{r "auditor"}};
GRANT UPDATE (payload, edited_payload, headers, redacted_at) ON {{.Inbox}}.dead_letters TO {{r "sweeper"}};
-- The copies of corrected payloads on finished requests and approvals.
GRANT SELECT, UPDATE (payload) ON {{.Inbox}}.dead_letter_requests TO {{r "sweeper"}};
GRANT SELECT, UPDATE (payload) ON {{.Outbox}}.approvals TO {{r "sweeper"}};
