// Package badinput holds the tests of hostile and broken input that cross
// packages: bytes that are legal but awkward (NUL, invalid UTF-8, shell and
// SQL metacharacters) carried end to end, a broker that refuses a message, a
// component running under the wrong database role, and a database that
// refuses the password. Each must end with a clear error and nothing lost.
// The input each package refuses on its own is tested in that package; the
// table in docs/reliability.md maps every item to its test.
package badinput
