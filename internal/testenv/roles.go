package testenv

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DropRoles removes the roles a test created with migrations.ApplyRoles
// under prefix (roles are cluster-wide, so they outlive the test's
// database): what they own or were granted in db first, then the login
// roles, then the group roles they are members of. It returns the first
// error dropping a role; callers that only tidy up ignore it.
func DropRoles(db *DB, prefix string) error {
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, `SELECT rolname FROM pg_roles WHERE rolname LIKE $1 || '\_%'`, prefix)
	if err != nil {
		return fmt.Errorf("roles of %s: %w", prefix, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("roles of %s: %w", prefix, err)
	}
	if conn, err := pgx.Connect(ctx, db.URL); err == nil {
		for _, n := range names {
			conn.Exec(ctx, "DROP OWNED BY "+pgx.Identifier{n}.Sanitize()) //nolint:errcheck // the role may own nothing
		}
		conn.Close(ctx)
	}
	var first error
	for _, logins := range []bool{true, false} { // logins first: they are members of the others
		for _, n := range names {
			if strings.HasSuffix(n, "_login") != logins {
				continue
			}
			if _, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{n}.Sanitize()); err != nil && first == nil {
				first = fmt.Errorf("drop role %s: %w", n, err)
			}
		}
	}
	return first
}
