package migrations

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"regexp"
	"strings"
	"text/template"

	"github.com/jackc/pgx/v5"

	"github.com/outboxkit/outboxkit/internal/pgutil"
)

//go:embed roles/roles.sql
var rolesSQL string

// RolePrefixDefault prefixes the role names: outboxkit_producer, ...
const RolePrefixDefault = "outboxkit"

// Roles lists the component roles created by RolesSQL, without prefix.
var Roles = []string{"producer", "relay", "consumer", "sweeper", "operator", "auditor"}

var rolePrefixPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,40}$`)

// RolesSQL renders the optional least-privilege roles for cfg's schemas:
// NOLOGIN group roles <prefix>_producer, _relay, _consumer, _sweeper,
// _operator and _auditor with exactly the grants each component needs (see
// docs/security.md). Apply it with ApplyRoles or give it to your DBA.
func RolesSQL(cfg *Config, prefix string) (string, error) {
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		return "", err
	}
	if prefix == "" {
		prefix = RolePrefixDefault
	}
	if !rolePrefixPattern.MatchString(prefix) {
		return "", fmt.Errorf("%w: role prefix %q: use lower-case letters, digits and underscores", ErrInvalidConfig, prefix)
	}
	name := func(role string) string { return prefix + "_" + role }
	funcs := template.FuncMap{
		"r": func(role string) string { return pgutil.Ident(name(role)) },                              // as identifier
		"q": func(role string) string { return "'" + strings.ReplaceAll(name(role), "'", "''") + "'" }, // as literal
	}
	tmpl, err := template.New("roles").Funcs(funcs).Parse(rolesSQL)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	err = tmpl.Execute(&buf, struct{ Outbox, Inbox string }{
		Outbox: pgutil.Ident(c.OutboxSchema),
		Inbox:  pgutil.Ident(c.InboxSchema),
	})
	return buf.String(), err
}

// ApplyRoles creates (or updates the grants of) the component roles. It
// needs a role allowed to CREATE ROLE and to grant on the outboxkit tables
// (their owner or a superuser).
func ApplyRoles(ctx context.Context, databaseURL string, cfg *Config, prefix string) error {
	sql, err := RolesSQL(cfg, prefix)
	if err != nil {
		return err
	}
	connCfg, err := pgutil.ParseConnConfig(databaseURL)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, connCfg)
	if err != nil {
		return fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Serialise with migrations and with other ApplyRoles runs.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", advisoryLockID(cfg.WithDefaults().OutboxSchema)); err != nil {
		return err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", advisoryLockID(cfg.WithDefaults().OutboxSchema))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("migrations: apply roles: %w", pgutil.MissingSchemaHint(err, cfg.WithDefaults().OutboxSchema))
	}
	return nil
}
