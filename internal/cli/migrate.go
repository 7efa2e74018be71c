package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/outboxkit/outboxkit/migrations"
)

const migrateUsage = `migrate <up|down|version|print> [flags]

  up       apply every migration not yet applied (running it twice is a no-op)
  down     revert the last migration (--steps N, or --all); refuses while
           unpublished events exist unless --force
  version  print the applied version and whether a migration failed half-way
  print    print the SQL of every migration for these flags, for DBAs who
           apply DDL themselves
  roles    create or update the least-privilege roles <prefix>_producer,
           _relay, _consumer, _sweeper, _operator, _auditor (--role-prefix;
           --print to show the SQL instead); see docs/security.md`

func runMigrate(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "migrate", migrateUsage)
	var db dbFlags
	db.register(fs, env)
	partitions := fs.Int("partitions", migrations.PartitionsDefault, "relay partitions created by the first migration")
	steps := fs.Int("steps", 1, "down: number of migrations to revert")
	all := fs.Bool("all", false, "down: revert every migration (drops every outboxkit table)")
	force := fs.Bool("force", false, "down: revert even if unpublished events would be lost")
	rolePrefix := fs.String("role-prefix", migrations.RolePrefixDefault, "roles: prefix of the role names")
	printOnly := fs.Bool("print", false, "roles: print the SQL instead of applying it")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageError("expected one action: up, down, version, print or roles")
	}
	cfg := &migrations.Config{OutboxSchema: db.outboxSchema, InboxSchema: db.inboxSchema, Partitions: *partitions}
	if pos[0] == "roles" && *printOnly {
		sql, err := migrations.RolesSQL(cfg, *rolePrefix)
		if err != nil {
			return err
		}
		fmt.Fprintln(env.Stdout, sql)
		return nil
	}
	if pos[0] == "print" {
		files, err := migrations.Render(cfg)
		if err != nil {
			return err
		}
		for _, f := range files {
			fmt.Fprintf(env.Stdout, "-- ==== %s ====\n%s\n", f.Name, f.SQL)
		}
		return nil
	}
	url, err := db.databaseURL(env)
	if err != nil {
		return err
	}
	switch pos[0] {
	case "roles":
		if err := migrations.ApplyRoles(ctx, url, cfg, *rolePrefix); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "roles %s_{%s} are up to date; grant them to your login roles\n", *rolePrefix, strings.Join(migrations.Roles, ","))
		return nil
	case "up":
		if err := migrations.Up(ctx, url, cfg); err != nil {
			return err
		}
		v, _, err := migrations.Version(ctx, url, cfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "outboxkit schema %q is at version %d\n", cfg.OutboxSchema, v)
		return nil
	case "down":
		if err := migrations.Down(ctx, url, cfg, migrations.DownOptions{Steps: *steps, All: *all, Force: *force}); err != nil {
			return err
		}
		v, _, err := migrations.Version(ctx, url, cfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "outboxkit schema %q is at version %d\n", cfg.OutboxSchema, v)
		return nil
	case "version":
		v, dirty, err := migrations.Version(ctx, url, cfg)
		if err != nil {
			return err
		}
		state := "clean"
		if dirty {
			state = "DIRTY: a migration failed half-way; see docs/operations.md before retrying"
		}
		fmt.Fprintf(env.Stdout, "version %d of %d (%s)\n", v, migrations.Latest(), state)
		return nil
	}
	return usageError("unknown action %q: use up, down, version, print or roles", pos[0])
}
