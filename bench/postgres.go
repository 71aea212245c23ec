package bench

// The PostgreSQL baselines: the wallet a team builds on PostgreSQL, written
// two ways. Three tables, amounts in bigint micro-USD (never numeric, never
// floats):
//
//	wallets(customer PK, balance >= 0)            the balance
//	events(customer, event_id PK, charge)         the idempotency record
//	ledger(id bigserial PK, customer, event_id,   the ledger, one row per charge,
//	       amount), indexed on (customer, id)     read back per customer in order
//
// "postgres-plain" is the way most code is written: one transaction per
// request, and per event one statement per step, each its own round trip:
// SELECT the event id (a duplicate answers its recorded charge), SELECT the
// wallet FOR UPDATE, and, if the balance can pay, UPDATE the wallet, INSERT
// the event, INSERT the ledger row; then COMMIT. About 5 round trips per
// event.
//
// "postgres-strong" is the fastest correct form we could justify: the request
// is decided set-wise, in two round trips and a handful of statements
// whatever its size.
//
//  1. One pipelined batch: BEGIN; lock the request's wallets and read their
//     balances (one SELECT ... FOR UPDATE); read which of its (customer, id)
//     pairs are already recorded, with their charges (one SELECT joined
//     against unnest of the ids).
//  2. In Go, the request is folded in order (decideRequest): a recorded or
//     already-seen id is a duplicate, an event the running balance cannot pay
//     is rejected, anything else is charged and deducted from the running
//     balance. Nothing else can change these wallets or their events meanwhile:
//     the locks are held.
//  3. One pipelined batch: one UPDATE of the wallets from unnest(customers,
//     debits), one INSERT of the events and one of the ledger rows from unnest
//     of arrays, COMMIT. A request that charges nothing sends ROLLBACK instead,
//     which needs no WAL flush (see below why its answers are durable anyway).
//
// Why this form. The obvious alternative is one statement per event (a CTE
// doing the idempotency check, the conditional UPDATE and both INSERTs),
// all pipelined with BEGIN and COMMIT in one round trip. We measured both
// (BenchmarkPostgresApply: 100-event requests over 1000 customers, 8
// clients, a shared 2-core VM, three alternating runs each): the set-wise
// form ran 28-40k events/s at 40-59 µs of server CPU per event, the
// per-event CTEs 29-33k at 49-55 µs. The set-wise form wins, by about 15%
// on the median and not on every run: the rows written (per event here a
// wallet update, two heap inserts, three index entries) cost more than the
// 100 statements' executor starts. It also keeps the decision in one function a
// reader can follow, and it never pipelines a COMMIT ahead of a result it
// depends on: the one-round-trip form commits before the client has seen,
// say, that a wallet is missing, unless the SQL raises the error itself.
// A PL/pgSQL function looping over the events is one round trip too, with
// the same per-event statements inside it.
//
// No deadlock, in either mode: every transaction's first statement locks
// every wallet the request touches, in customer order (lockWalletsSQL: its
// ORDER BY sits under the FOR UPDATE, so PostgreSQL sorts the rows and then
// locks them one by one in that order). After it, a transaction writes only
// rows of wallets it already holds (wallets, events) or new rows nobody else
// can wait for (ledger, a fresh bigserial; an events key of a customer whose
// wallet it holds, so no other transaction can be inserting the same key).
// So every lock wait is for a wallet, and every transaction takes its
// wallets in ascending order: no cycle can form. This is also why the plain
// mode may read the event id before it locks the wallet per event: the
// wallet has been locked since the first statement, so no transaction can
// record that id in between. (Without the up-front lock, two transactions
// taking the same id concurrently would both see it absent, and the second's
// INSERT would fail on the primary key.)
//
// The isolation level is READ COMMITTED, set on every connection and on every
// BEGIN: each statement sees what was committed before it started, so the
// reads after the lock see the last committed state of the locked wallets.
//
// Why an answered charge is on disk, step by step (PostgreSQL 15: xact.c
// RecordTransactionCommit, xlog.c XLogFlush, and the documentation of
// synchronous_commit, fsync and full_page_writes):
//
//  1. Every change of the transaction is first written to the WAL;
//     COMMIT inserts the commit record, then, with synchronous_commit on,
//     XLogFlush writes the WAL up to that record and fdatasyncs it
//     (wal_sync_method fdatasync) before the transaction is marked committed,
//     made visible, or answered. Concurrent commits share one flush (group
//     commit): whoever holds WALWriteLock flushes everything inserted so far.
//  2. fsync on makes that flush reach the disk (off turns it into a no-op);
//     a failed WAL write or flush is a PANIC, and data_sync_retry off makes a
//     failed data-file fsync one too: the server restarts and recovers from
//     the WAL rather than answer on top of a lost write.
//  3. full_page_writes on: the first change of a page after a checkpoint logs
//     the whole page, so that replaying the WAL can repair a page torn by a
//     power cut.
//  4. On restart after a crash, PostgreSQL replays the WAL from the last
//     checkpoint: every committed transaction is back, and no uncommitted
//     one (the transaction is all or nothing, so is the request).
//  5. The client answers only after the COMMIT's reply (plain: Tx.Commit;
//     strong: the COMMIT result of the second batch, read before Apply
//     returns). A duplicate or rejected answer reads only committed rows, and
//     with synchronous_commit on a transaction is visible only after its
//     flush: so what it read is durable, and the request that decides nothing
//     but those may ROLLBACK.
//
// The server is a private cluster: StartPostgres runs initdb (with its own
// fsync of the new files) into a directory and starts postgres on a loopback
// port with every setting the chain above depends on passed as a flag. Run
// as root, both run as the "postgres" system user that Debian's package
// creates: PostgreSQL refuses to run as root.
//
// The client is pgx, over a small pool of our own (pgConnPool: pgxpool needs
// github.com/jackc/puddle/v2, which go.mod does not require), with prepared
// statements cached per connection (QueryExecModeCacheStatement).

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// The modes of NewPostgresWallet.
const (
	PostgresPlain  = "plain"  // one transaction per request, a statement per step of each event
	PostgresStrong = "strong" // one transaction per request, decided set-wise in two round trips
)

// The bounds of the PostgreSQL baselines. A crossed bound is an error naming it.
const (
	postgresRequestEventsMax = 10_000                 // events in one Apply (meterd's EventsMax)
	postgresIDBytesMax       = 128                    // an event or customer id (meterd's IDLenMax)
	postgresSetupRowsMax     = 10_000                 // customers per Setup statement
	postgresMaxConnections   = 100                    // the server's max_connections
	postgresConnsDefault     = 64                     // the wallet's connections, without PostgresConns
	postgresConnsMax         = postgresMaxConnections // PostgresConns
	postgresStartWaitMax     = 60 * time.Second       // from exec to a server that answers (crash recovery included)
	postgresStartAttemptsMax = 3                      // fresh ports tried when one was taken under us
	postgresStopWaitMax      = 30 * time.Second       // from SIGINT (fast shutdown) to exit, before SIGKILL
	postgresKillWaitMax      = 10 * time.Second       // from SIGKILL to every process of the cluster gone
	postgresProbeTimeout     = 2 * time.Second        // one readiness probe
	postgresProbeInterval    = 20 * time.Millisecond  // between readiness probes, and between looks at /proc
	postgresDialTimeout      = 5 * time.Second        // one connection of the wallet
	postgresRollbackTimeout  = 5 * time.Second        // the ROLLBACK after a failed request
	postgresLogTailBytesMax  = 4 << 10                // of the server's log quoted in an error
	postgresSocketPathMax    = 107                    // sun_path less its NUL: longer, no Unix socket
	postgresBinGlob          = "/usr/lib/postgresql/*/bin"
	postgresMissingHelp      = "install it with `apt-get install postgresql` (make test-deps does)"
	postgresSystemUser       = "postgres"     // the server's user when we run as root
	postgresSuperuser        = "postgres"     // the cluster's superuser (initdb -U)
	postgresLogName          = "postgres.log" // in the cluster's directory
	postgresSharedBuffers    = "256MB"
)

// PostgresServer is a private PostgreSQL cluster: its own directory and
// loopback port, started by StartPostgres and stopped by its owner.
type PostgresServer struct {
	dir        string
	port       int
	serverProc // the postmaster
}

// StartPostgres starts a PostgreSQL cluster on dir: it runs initdb there
// first when dir holds no cluster yet (an empty or missing dir), then
// postgres on a free port of 127.0.0.1, and returns once that very server
// accepts connections (after the crash recovery a killed server before it
// left to do). No configuration file decides a setting durability depends
// on: each is a flag.
//
// Run as root, initdb and postgres run as the system user postgres; dir is
// made its own, and every directory above dir must let it through (search
// permission), or StartPostgres says which one does not.
func StartPostgres(dir string) (*PostgresServer, error) {
	bin, err := findPostgresBin(postgresBinGlob)
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	if err := preparePostgresDir(dir, cred); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := initPostgres(bin, dir, cred); err != nil {
			return nil, err
		}
	}
	var lastErr error
	for range postgresStartAttemptsMax {
		s, err := launchPostgres(bin, dir, cred)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errPostgresPortTaken) {
			break
		}
	}
	return nil, lastErr
}

// findPostgresBin returns the newest of the directories matching glob that
// holds both initdb and postgres (Debian keeps them out of PATH, one
// directory per major version).
func findPostgresBin(glob string) (string, error) {
	dirs, _ := filepath.Glob(glob)
	var found []string
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("postgres: no initdb and postgres under %s: %s", glob, postgresMissingHelp)
	}
	// The version is the directory above bin: compare it as a number.
	version := func(d string) int { v, _ := strconv.Atoi(filepath.Base(filepath.Dir(d))); return v }
	return slices.MaxFunc(found, func(a, b string) int { return cmp.Compare(version(a), version(b)) }), nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// postgresUser is who the server runs as when we are root.
type postgresUser struct {
	name string
	uid  uint32
	gids []uint32 // the primary group first
	cred *syscall.Credential
}

// postgresCredential returns nil when we are not root (the server runs as
// us), else the system user postgres.
func postgresCredential() (*postgresUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(postgresSystemUser)
	if err != nil {
		return nil, fmt.Errorf("postgres: running as root, the server must run as the system user %q (PostgreSQL refuses root), and %v: %s",
			postgresSystemUser, err, postgresMissingHelp)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres: user %s: %w", u.Username, err)
	}
	pu := &postgresUser{
		name: u.Username,
		uid:  uint32(uid),
		gids: []uint32{uint32(gid)},
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && !slices.Contains(pu.gids, uint32(g)) {
				pu.gids = append(pu.gids, uint32(g))
			}
		}
	}
	pu.cred.Groups = pu.gids[1:]
	return pu, nil
}

// preparePostgresDir creates dir (mode 0700, as PostgreSQL requires) and,
// when the server runs as another user, gives dir to that user and checks
// that it can reach dir.
func preparePostgresDir(dir string, pu *postgresUser) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if pu == nil {
		return nil
	}
	if err := os.Chown(dir, int(pu.uid), int(pu.gids[0])); err != nil {
		return fmt.Errorf("postgres: giving %s to user %s: %w", dir, pu.name, err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		if !canSearch(st, pu) {
			return fmt.Errorf("postgres: running as root, the server runs as user %s, which cannot reach %s: %s is mode %v; "+
				"give it search permission (chmod o+x %s) or put the cluster elsewhere", pu.name, dir, p, st.Mode().Perm(), p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// canSearch reports whether pu may pass through the directory st.
func canSearch(st os.FileInfo, pu *postgresUser) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true // no owner to judge by: let the server try
	}
	perm := st.Mode().Perm()
	switch {
	case sys.Uid == pu.uid:
		return perm&0o100 != 0
	case slices.Contains(pu.gids, sys.Gid):
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}

// initPostgres runs initdb into dir: trust authentication on loopback (the
// cluster is private and listens on 127.0.0.1 only), UTF-8, the C locale.
// initdb fsyncs what it wrote before it returns.
func initPostgres(bin, dir string, pu *postgresUser) error {
	cmd := exec.Command(filepath.Join(bin, "initdb"),
		"-D", dir,
		"-U", postgresSuperuser,
		"--auth=trust",
		"--encoding=UTF8",
		"--locale=C",
		"--no-instructions",
	)
	cmd.Dir = dir
	cmd.SysProcAttr = postgresSysProcAttr(pu)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("postgres: initdb -D %s: %w\n%s", dir, err, textTail(out, postgresLogTailBytesMax))
	}
	return nil
}

// postgresSysProcAttr runs a child as pu (nil: as us), and asks the kernel
// to send it SIGINT (PostgreSQL's fast shutdown) if we die first, so that a
// crashed test does not leave a server behind.
func postgresSysProcAttr(pu *postgresUser) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT}
	if pu != nil {
		a.Credential = pu.cred
	}
	return a
}

var errPostgresPortTaken = errors.New("the port was taken by another process")

// launchPostgres starts the postmaster on a port that was free a moment ago,
// and waits until it accepts connections.
func launchPostgres(bin, dir string, pu *postgresUser) (*PostgresServer, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("postgres: a free port: %w", err)
	}
	logPath := filepath.Join(dir, postgresLogName)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	logStart, _ := logFile.Seek(0, io.SeekEnd)

	// The Unix socket goes into dir, not /var/run/postgresql (which the
	// system's cluster owns); a dir too long for a socket path gets none:
	// the wallet connects over TCP anyway.
	socketDir := dir
	if len(dir)+len("/.s.PGSQL.65535") > postgresSocketPathMax {
		socketDir = ""
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"),
		"-D", dir,
		"-h", "127.0.0.1",
		"-p", strconv.Itoa(port),
		"-k", socketDir,
		"-c", "fsync=on", // step 2 of the file comment
		"-c", "synchronous_commit=on", // step 1
		"-c", "wal_sync_method=fdatasync", // step 1: Linux's default, stated
		"-c", "full_page_writes=on", // step 3
		"-c", "data_sync_retry=off", // step 2: PANIC on a failed data-file fsync
		"-c", "max_connections="+strconv.Itoa(postgresMaxConnections),
		"-c", "shared_buffers="+postgresSharedBuffers,
		"-c", "logging_collector=off", // the log is stderr, which is logFile
	)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = postgresSysProcAttr(pu)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("postgres: starting %s: %w", cmd.Path, err)
	}
	s := &PostgresServer{dir: dir, port: port}
	s.startReaping("postgres", cmd)
	if err := s.waitReady(); err != nil {
		_ = s.Kill()
		log := logTail(logPath, logStart, postgresLogTailBytesMax)
		if strings.Contains(log, "could not bind") || strings.Contains(log, "Address already in use") {
			err = fmt.Errorf("%w: %v", errPostgresPortTaken, err)
		}
		return nil, fmt.Errorf("postgres in %s (port %d): %w\n--- %s ---\n%s", dir, port, err, logPath, log)
	}
	return s, nil
}

// waitReady waits until the server accepts a connection and answers (it
// refuses them while it recovers), and checks that the answer came from this
// cluster, not from another server that took the port.
func (s *PostgresServer) waitReady() error {
	deadline := time.Now().Add(postgresStartWaitMax)
	lastErr := errors.New("no answer yet")
	for {
		select {
		case <-s.done:
			return fmt.Errorf("exited before it accepted connections (%v)", s.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %v (postgresStartWaitMax): %v", postgresStartWaitMax, lastErr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), postgresProbeTimeout)
		dataDir, err := probePostgres(ctx, s.DSN())
		cancel()
		if err == nil {
			if dataDir != s.dir {
				return fmt.Errorf("%w: port %d answers for data directory %s", errPostgresPortTaken, s.port, dataDir)
			}
			return nil
		}
		lastErr = err
		time.Sleep(postgresProbeInterval)
	}
}

// probePostgres connects once and asks the server for its data directory.
func probePostgres(ctx context.Context, dsn string) (string, error) {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var dataDir string
	err = c.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dataDir)
	return dataDir, err
}

// DSN returns the connection string of the cluster's postgres database, as
// its superuser, over TCP.
func (s *PostgresServer) DSN() string { return s.dsnOf(postgresSuperuser) }

func (s *PostgresServer) dsnOf(database string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=%d",
		s.port, postgresSuperuser, database, int(postgresDialTimeout/time.Second))
}

// CreateDatabase creates an empty database named name (lower-case letters,
// digits and _, starting with a letter, at most 63 bytes) and returns its
// DSN: a fresh database per wallet keeps runs apart on one cluster.
func (s *PostgresServer) CreateDatabase(ctx context.Context, name string) (string, error) {
	if !isPostgresName(name) {
		return "", fmt.Errorf("postgres: database name %q: want [a-z][a-z0-9_]*, at most 63 bytes", name)
	}
	c, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		return "", fmt.Errorf("postgres: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("postgres: CREATE DATABASE %s: %w", name, err)
	}
	return s.dsnOf(name), nil
}

// isPostgresName reports whether name is an identifier that needs no quoting.
func isPostgresName(name string) bool {
	if name == "" || len(name) > 63 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// Dir returns the cluster's directory: its data and its log.
func (s *PostgresServer) Dir() string { return s.dir }

// PIDs returns the postmaster and its children now: a backend per
// connection, the checkpointer, the WAL writer and the other helpers. The
// CPU of a child that has exited is in the postmaster's cutime once it is
// reaped. A stopped server has none.
func (s *PostgresServer) PIDs() []int {
	select {
	case <-s.done:
		return nil
	default:
	}
	return append([]int{s.PID()}, childPIDs(s.PID())...)
}

// childPIDs lists from /proc the processes whose parent is pid.
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procState(p); ok && ppid == pid {
			kids = append(kids, p)
		}
	}
	return kids
}

// procState reads a process's state letter and parent from /proc/pid/stat:
// "pid (comm) state ppid ...", where comm may hold spaces and parentheses.
func procState(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0][0], ppid, err == nil
}

// Stop shuts the cluster down with SIGINT (fast shutdown: open transactions
// are rolled back, a checkpoint is written, every process exits), and kills
// it if the postmaster has not exited within postgresStopWaitMax. Stopping a
// stopped server does nothing.
func (s *PostgresServer) Stop() error { return s.stopOnce(syscall.SIGINT, postgresStopWaitMax, s.kill) }

// Kill kills the cluster as a crash would: SIGKILL to the postmaster and to
// each of its children, with no shutdown, no checkpoint, no flush; it returns
// once they are all gone, so that a restart on the same directory finds the
// shared memory free. Killing a stopped server does nothing.
func (s *PostgresServer) Kill() error { return s.killOnce(s.kill) }

// kill stops the postmaster first (SIGSTOP: it forks no new child while
// its children are listed), then kills the children and the postmaster.
// The children are not ours to reap: they are gone when /proc no longer
// has them or shows them as zombies.
func (s *PostgresServer) kill() error {
	select {
	case <-s.done:
		return nil // reaped: its pid may be someone else's now
	default:
	}
	pid := s.PID()
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	kids := childPIDs(pid)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	_ = s.cmd.Process.Kill()
	deadline := time.After(postgresKillWaitMax)
	select {
	case <-s.done:
	case <-deadline:
		return fmt.Errorf("postgres pid %d still running %v after SIGKILL (postgresKillWaitMax)", pid, postgresKillWaitMax)
	}
	for _, k := range kids {
		for {
			if state, _, ok := procState(k); !ok || state == 'Z' {
				break
			}
			select {
			case <-deadline:
				return fmt.Errorf("postgres child pid %d still running %v after SIGKILL (postgresKillWaitMax)", k, postgresKillWaitMax)
			case <-time.After(postgresProbeInterval):
			}
		}
	}
	return nil
}

// The wallet's statements. Every statement that takes arguments is prepared
// once per connection and cached (QueryExecModeCacheStatement).
const (
	// postgresSchemaSQL creates the tables, once per database. The advisory
	// lock keeps two wallets that start together on one database from
	// racing on CREATE TABLE IF NOT EXISTS (which is not safe against
	// itself); the string runs as one implicit transaction.
	postgresSchemaSQL = `
SELECT pg_advisory_xact_lock(hashtext('meterd-bench-postgres-schema'));
CREATE TABLE IF NOT EXISTS wallets (
	customer text PRIMARY KEY,
	balance  bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS events (
	customer text NOT NULL,
	event_id text NOT NULL,
	charge   bigint NOT NULL CHECK (charge >= 0),
	PRIMARY KEY (customer, event_id)
);
CREATE TABLE IF NOT EXISTS ledger (
	id       bigserial PRIMARY KEY,
	customer text NOT NULL,
	event_id text NOT NULL,
	amount   bigint NOT NULL CHECK (amount >= 0)
);
CREATE INDEX IF NOT EXISTS ledger_customer_id ON ledger (customer, id);
`
	postgresSetupSQL = `INSERT INTO wallets (customer, balance) SELECT unnest($1::text[]), $2::bigint
ON CONFLICT (customer) DO NOTHING`

	// lockWalletsSQL locks the request's wallets in customer order, the
	// first statement of every request in both modes: see "No deadlock".
	lockWalletsSQL = `SELECT customer, balance FROM wallets WHERE customer = ANY($1::text[]) ORDER BY customer FOR UPDATE`

	// The plain mode's steps, one event at a time.
	plainSeenSQL    = `SELECT charge FROM events WHERE customer = $1 AND event_id = $2`
	plainWalletSQL  = `SELECT balance FROM wallets WHERE customer = $1 FOR UPDATE`
	plainDebitSQL   = `UPDATE wallets SET balance = balance - $2 WHERE customer = $1`
	plainEventSQL   = `INSERT INTO events (customer, event_id, charge) VALUES ($1, $2, $3)`
	plainLedgerSQL  = `INSERT INTO ledger (customer, event_id, amount) VALUES ($1, $2, $3)`
	postgresBeginRC = `BEGIN ISOLATION LEVEL READ COMMITTED`

	// The strong mode's statements, one per table for the whole request.
	strongSeenSQL = `SELECT e.customer, e.event_id, e.charge
FROM unnest($1::text[], $2::text[]) AS r(customer, event_id)
JOIN events e ON e.customer = r.customer AND e.event_id = r.event_id`
	// The ANY repeats the join's condition so that the planner reaches the
	// wallets through their index; without it, it hashed a scan of the
	// whole (update-bloated) table: 25-36k events/s at 47-70 µs of server
	// CPU per event, against 28-40k at 40-59 µs.
	strongDebitSQL = `UPDATE wallets w SET balance = w.balance - d.debit
FROM unnest($1::text[], $2::bigint[]) AS d(customer, debit)
WHERE w.customer = d.customer AND w.customer = ANY($1::text[])`
	strongEventsSQL = `INSERT INTO events (customer, event_id, charge)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])`
	// The ledger's ids follow the request's order: ORDER BY the position.
	strongLedgerSQL = `INSERT INTO ledger (customer, event_id, amount)
SELECT customer, event_id, amount
FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS r(customer, event_id, amount, n)
ORDER BY n`

	postgresBalanceSQL = `SELECT balance FROM wallets WHERE customer = $1`
	postgresLedgerSQL  = `SELECT event_id, amount FROM ledger WHERE customer = $1 ORDER BY id`
)

// postgresSettingsWanted are the settings the durability and locking
// arguments of the file comment depend on; NewPostgresWallet refuses a
// server (or session) without them.
var postgresSettingsWanted = []struct{ name, want string }{
	{"fsync", "on"},
	{"synchronous_commit", "on"},
	{"full_page_writes", "on"},
	{"default_transaction_isolation", "read committed"},
}

// PostgresWallet is a PostgreSQL baseline under test: a bench.System over
// pgx, in the plain or the strong mode.
type PostgresWallet struct {
	mode   string
	server *PostgresServer // whose processes count as the wallet's; nil: none
	pool   *pgConnPool
}

// PostgresOption is an option of NewPostgresWallet.
type PostgresOption func(*postgresWalletOptions)

type postgresWalletOptions struct {
	server *PostgresServer
	conns  int
}

// PostgresServerOf names the cluster whose processes' CPU counts as the
// wallet's (PostgresServer.PIDs).
func PostgresServerOf(s *PostgresServer) PostgresOption {
	return func(o *postgresWalletOptions) { o.server = s }
}

// PostgresConns sets how many connections the wallet opens at most (default
// 64), each on demand: one per concurrent Apply.
func PostgresConns(n int) PostgresOption { return func(o *postgresWalletOptions) { o.conns = n } }

// NewPostgresWallet connects to the database at dsn, checks the settings
// the wallet's guarantees depend on, and creates its tables if they are
// missing. mode is PostgresPlain or PostgresStrong; the Name in reports is
// "postgres-plain" or "postgres-strong".
func NewPostgresWallet(dsn string, mode string, opts ...PostgresOption) (*PostgresWallet, error) {
	if mode != PostgresPlain && mode != PostgresStrong {
		return nil, fmt.Errorf("postgres wallet: mode %q: want %q or %q", mode, PostgresPlain, PostgresStrong)
	}
	o := postgresWalletOptions{conns: postgresConnsDefault}
	for _, opt := range opts {
		opt(&o)
	}
	if o.conns < 1 || o.conns > postgresConnsMax {
		return nil, fmt.Errorf("postgres wallet: %d connections: want 1 to %d (postgresConnsMax)", o.conns, postgresConnsMax)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres wallet: %w", err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	cfg.StatementCacheCapacity = 64 // the wallet has 13 statements
	cfg.RuntimeParams["synchronous_commit"] = "on"
	cfg.RuntimeParams["default_transaction_isolation"] = "read committed"
	cfg.RuntimeParams["application_name"] = "meterd-bench-postgres-" + mode
	if cfg.ConnectTimeout <= 0 || cfg.ConnectTimeout > postgresDialTimeout {
		cfg.ConnectTimeout = postgresDialTimeout
	}
	w := &PostgresWallet{mode: mode, server: o.server, pool: newPgConnPool(cfg, o.conns)}
	ctx, cancel := context.WithTimeout(context.Background(), postgresStartWaitMax)
	defer cancel()
	if err := w.prepare(ctx); err != nil {
		w.pool.close()
		return nil, fmt.Errorf("postgres wallet at %s:%d/%s: %w", cfg.Host, cfg.Port, cfg.Database, err)
	}
	return w, nil
}

// prepare checks the session's settings and creates the schema.
func (w *PostgresWallet) prepare(ctx context.Context) error {
	c, err := w.pool.acquire(ctx)
	if err != nil {
		return err
	}
	defer w.pool.release(c)
	for _, s := range postgresSettingsWanted {
		var got string
		if err := c.QueryRow(ctx, "SELECT current_setting($1)", s.name).Scan(&got); err != nil {
			return fmt.Errorf("reading %s: %w", s.name, err)
		}
		if got != s.want {
			return fmt.Errorf("%s is %q: want %q", s.name, got, s.want)
		}
	}
	if _, err := c.Exec(ctx, postgresSchemaSQL); err != nil {
		return fmt.Errorf("creating the tables: %w", err)
	}
	return nil
}

func (w *PostgresWallet) Name() string { return "postgres-" + w.mode }

func (w *PostgresWallet) PIDs() []int {
	if w.server == nil {
		return nil
	}
	return w.server.PIDs()
}

func (w *PostgresWallet) Close() error {
	w.pool.close()
	return nil
}

// checkPostgresID checks an event or customer id against
// postgresIDBytesMax, and as text PostgreSQL can store (UTF-8, no NUL).
func checkPostgresID(what, id string) error {
	if id == "" || len(id) > postgresIDBytesMax {
		return fmt.Errorf("%s %q: want 1 to %d bytes (postgresIDBytesMax)", what, id, postgresIDBytesMax)
	}
	if !utf8.ValidString(id) || strings.IndexByte(id, 0) >= 0 {
		return fmt.Errorf("%s %q: want UTF-8 without NUL", what, id)
	}
	return nil
}

// Setup creates each customer's wallet with balance micro-USD,
// postgresSetupRowsMax per statement, each statement its own transaction,
// durable when it returns. A customer that already has a wallet keeps it.
func (w *PostgresWallet) Setup(ctx context.Context, customers []string, balance int64) error {
	if balance < 0 {
		return fmt.Errorf("%s: balance %d: want at least 0", w.Name(), balance)
	}
	for _, c := range customers {
		if err := checkPostgresID("customer", c); err != nil {
			return fmt.Errorf("%s: %w", w.Name(), err)
		}
	}
	c, err := w.pool.acquire(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", w.Name(), err)
	}
	defer w.pool.release(c)
	for start := 0; start < len(customers); start += postgresSetupRowsMax {
		part := customers[start:min(start+postgresSetupRowsMax, len(customers))]
		if _, err := c.Exec(ctx, postgresSetupSQL, part, balance); err != nil {
			return fmt.Errorf("%s: setup: %w", w.Name(), err)
		}
	}
	return nil
}

// checkPostgresRequest checks a request against the bounds before anything
// is sent.
func checkPostgresRequest(events []Event, results []Result) error {
	if len(results) != len(events) {
		return fmt.Errorf("%d results for %d events", len(results), len(events))
	}
	if len(events) > postgresRequestEventsMax {
		return fmt.Errorf("%d events: at most %d per request (postgresRequestEventsMax)", len(events), postgresRequestEventsMax)
	}
	for i := range events {
		e := &events[i]
		if err := checkPostgresID("event id", e.ID); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if err := checkPostgresID("customer", e.Customer); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if e.Charge < 0 {
			return fmt.Errorf("event %d (%s): charge %d: want at least 0", i, e.ID, e.Charge)
		}
	}
	return nil
}

// Apply applies the request in one transaction, in the wallet's mode, and
// returns once it is committed. On an error the transaction is rolled back
// (or its connection closed): nothing of the request was applied, unless the
// error came after the COMMIT was sent, when all of it may have been.
func (w *PostgresWallet) Apply(ctx context.Context, events []Event, results []Result) error {
	if err := checkPostgresRequest(events, results); err != nil {
		return fmt.Errorf("%s: %w", w.Name(), err)
	}
	if len(events) == 0 {
		return nil
	}
	c, err := w.pool.acquire(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", w.Name(), err)
	}
	defer w.pool.release(c)
	if w.mode == PostgresPlain {
		err = applyPlain(ctx, c, events, results)
	} else {
		err = applyStrong(ctx, c, events, results)
	}
	if err != nil {
		return fmt.Errorf("%s: request of %d events: %w", w.Name(), len(events), err)
	}
	return nil
}

// requestCustomers returns the request's customers, each once, in order.
func requestCustomers(events []Event) []string {
	cs := make([]string, len(events))
	for i := range events {
		cs[i] = events[i].Customer
	}
	slices.Sort(cs)
	return slices.Compact(cs)
}

// readLockedWallets reads lockWalletsSQL's rows: the balance of each
// customer. A customer without a wallet is an error.
func readLockedWallets(rows pgx.Rows, customers []string) (map[string]int64, error) {
	balances := make(map[string]int64, len(customers))
	for rows.Next() {
		var c string
		var b int64
		if err := rows.Scan(&c, &b); err != nil {
			return nil, err
		}
		balances[c] = b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("locking the wallets: %w", err)
	}
	for _, c := range customers {
		if _, ok := balances[c]; !ok {
			return nil, fmt.Errorf("no wallet for customer %s", c)
		}
	}
	return balances, nil
}

// applyPlain is the plain mode: a transaction, the wallets locked in
// order, then five statements per event, each a round trip.
func applyPlain(ctx context.Context, c *pgx.Conn, events []Event, results []Result) error {
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit, a no-op
	customers := requestCustomers(events)
	rows, err := tx.Query(ctx, lockWalletsSQL, customers)
	if err != nil {
		return fmt.Errorf("locking the wallets: %w", err)
	}
	if _, err := readLockedWallets(rows, customers); err != nil {
		return err
	}
	for i := range events {
		r, err := applyPlainEvent(ctx, tx, &events[i])
		if err != nil {
			return fmt.Errorf("event %d (%s of %s): %w", i, events[i].ID, events[i].Customer, err)
		}
		results[i] = r
	}
	return tx.Commit(ctx)
}

// applyPlainEvent applies one event, a statement per step.
func applyPlainEvent(ctx context.Context, tx pgx.Tx, e *Event) (Result, error) {
	var charge int64
	err := tx.QueryRow(ctx, plainSeenSQL, e.Customer, e.ID).Scan(&charge)
	if err == nil {
		return Result{Status: StatusDuplicate, Charge: charge}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Result{}, err
	}
	var balance int64
	if err := tx.QueryRow(ctx, plainWalletSQL, e.Customer).Scan(&balance); err != nil {
		return Result{}, err
	}
	if balance < e.Charge {
		return Result{Status: StatusRejected}, nil
	}
	tag, err := tx.Exec(ctx, plainDebitSQL, e.Customer, e.Charge)
	if err != nil {
		return Result{}, err
	}
	if tag.RowsAffected() != 1 {
		return Result{}, fmt.Errorf("debit updated %d wallets, want 1", tag.RowsAffected())
	}
	if _, err := tx.Exec(ctx, plainEventSQL, e.Customer, e.ID, e.Charge); err != nil {
		return Result{}, err
	}
	if _, err := tx.Exec(ctx, plainLedgerSQL, e.Customer, e.ID, e.Charge); err != nil {
		return Result{}, err
	}
	return Result{Status: StatusCharged, Charge: e.Charge}, nil
}

// eventKey is an event's identity: its id is unique per customer.
type eventKey struct{ customer, id string }

// applyStrong is the strong mode: read and lock (one round trip), decide in
// Go, write and commit (one round trip).
func applyStrong(ctx context.Context, c *pgx.Conn, events []Event, results []Result) error {
	balances, seen, err := readRequestState(ctx, c, events)
	if err != nil {
		return err
	}
	return writeRequest(ctx, c, decideRequest(events, balances, seen, results))
}

// readRequestState begins the transaction, locks the request's wallets in
// order and reads their balances, and reads the charges recorded for the
// request's (customer, id) pairs: one pipelined batch. The transaction stays
// open.
func readRequestState(ctx context.Context, c *pgx.Conn, events []Event) (map[string]int64, map[eventKey]int64, error) {
	customers := requestCustomers(events)
	keyCustomers := make([]string, len(events))
	keyIDs := make([]string, len(events))
	for i := range events {
		keyCustomers[i], keyIDs[i] = events[i].Customer, events[i].ID
	}
	b := &pgx.Batch{}
	b.Queue(postgresBeginRC)
	b.Queue(lockWalletsSQL, customers)
	b.Queue(strongSeenSQL, keyCustomers, keyIDs)
	br := c.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, nil, fmt.Errorf("BEGIN: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("locking the wallets: %w", err)
	}
	balances, err := readLockedWallets(rows, customers)
	if err != nil {
		return nil, nil, err
	}
	rows, err = br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("reading the recorded events: %w", err)
	}
	seen := make(map[eventKey]int64)
	for rows.Next() {
		var k eventKey
		var charge int64
		if err := rows.Scan(&k.customer, &k.id, &charge); err != nil {
			return nil, nil, err
		}
		seen[k] = charge
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading the recorded events: %w", err)
	}
	return balances, seen, br.Close()
}

// postgresWrites is what a decided request writes: one debit per customer
// charged, and the charged events in request order.
type postgresWrites struct {
	debitCustomers []string
	debits         []int64
	customers, ids []string
	charges        []int64
}

// decideRequest applies the semantics to the request, in order, from the
// locked balances and the charges already recorded (both of which it
// updates as it goes), writes each event's result, and returns the writes.
// It is pure: the locks make its inputs the truth for the transaction's
// whole life.
func decideRequest(events []Event, balances map[string]int64, seen map[eventKey]int64, results []Result) postgresWrites {
	var w postgresWrites
	debit := make(map[string]int64)
	for i := range events {
		e := &events[i]
		k := eventKey{e.Customer, e.ID}
		if charge, ok := seen[k]; ok {
			results[i] = Result{Status: StatusDuplicate, Charge: charge}
			continue
		}
		if balances[e.Customer] < e.Charge {
			results[i] = Result{Status: StatusRejected}
			continue
		}
		balances[e.Customer] -= e.Charge // never below 0: checked just above
		debit[e.Customer] += e.Charge    // at most the starting balance: no overflow
		seen[k] = e.Charge
		results[i] = Result{Status: StatusCharged, Charge: e.Charge}
		w.customers = append(w.customers, e.Customer)
		w.ids = append(w.ids, e.ID)
		w.charges = append(w.charges, e.Charge)
	}
	for _, c := range slices.Sorted(maps.Keys(debit)) {
		if debit[c] > 0 {
			w.debitCustomers = append(w.debitCustomers, c)
			w.debits = append(w.debits, debit[c])
		}
	}
	return w
}

// writeRequest sends the writes and COMMIT in one pipelined batch, or
// ROLLBACK when nothing was charged, and checks every answer: each wallet
// debited once, each event and ledger row inserted, the COMMIT committed.
func writeRequest(ctx context.Context, c *pgx.Conn, w postgresWrites) error {
	b := &pgx.Batch{}
	end := "ROLLBACK"
	if len(w.customers) > 0 {
		end = "COMMIT"
		if len(w.debitCustomers) > 0 {
			b.Queue(strongDebitSQL, w.debitCustomers, w.debits)
		}
		b.Queue(strongEventsSQL, w.customers, w.ids, w.charges)
		b.Queue(strongLedgerSQL, w.customers, w.ids, w.charges)
	}
	b.Queue(end)
	br := c.SendBatch(ctx, b)
	defer br.Close()
	want := []int64{int64(len(w.customers)), int64(len(w.customers))}
	if len(w.debitCustomers) > 0 {
		want = append([]int64{int64(len(w.debitCustomers))}, want...)
	}
	if len(w.customers) == 0 {
		want = nil
	}
	for i, n := range want {
		tag, err := br.Exec()
		if err != nil {
			return err
		}
		if tag.RowsAffected() != n {
			return fmt.Errorf("statement %d of the writes (%s) touched %d rows, want %d", i, tag, tag.RowsAffected(), n)
		}
	}
	tag, err := br.Exec()
	if err != nil {
		return fmt.Errorf("%s: %w", end, err)
	}
	if tag.String() != end {
		return fmt.Errorf("%s answered %q", end, tag)
	}
	return br.Close()
}

// Balance reads the customer's wallet.
func (w *PostgresWallet) Balance(ctx context.Context, customer string) (int64, error) {
	c, err := w.pool.acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", w.Name(), err)
	}
	defer w.pool.release(c)
	var b int64
	err = c.QueryRow(ctx, postgresBalanceSQL, customer).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%s: no wallet for %s", w.Name(), customer)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: balance of %s: %w", w.Name(), customer, err)
	}
	return b, nil
}

// Ledger reads the customer's ledger rows in the order they were written.
func (w *PostgresWallet) Ledger(ctx context.Context, customer string) ([]LedgerRow, error) {
	c, err := w.pool.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", w.Name(), err)
	}
	defer w.pool.release(c)
	rows, err := c.Query(ctx, postgresLedgerSQL, customer)
	if err != nil {
		return nil, fmt.Errorf("%s: ledger of %s: %w", w.Name(), customer, err)
	}
	var out []LedgerRow
	for rows.Next() {
		var r LedgerRow
		if err := rows.Scan(&r.EventID, &r.Amount); err != nil {
			return nil, fmt.Errorf("%s: ledger of %s: %w", w.Name(), customer, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: ledger of %s: %w", w.Name(), customer, err)
	}
	return out, nil
}

var errPostgresWalletClosed = errors.New("the wallet is closed")

// pgConnPool is a bounded pool of pgx connections, opened on demand: at most
// cap(slots) exist at once, in use or idle.
type pgConnPool struct {
	cfg   *pgx.ConnConfig
	slots chan struct{}  // one token per connection in use or being opened
	idle  chan *pgx.Conn // open connections not in use; never more than cap(slots)

	mu     sync.Mutex
	closed bool
}

func newPgConnPool(cfg *pgx.ConnConfig, connsMax int) *pgConnPool {
	return &pgConnPool{
		cfg:   cfg,
		slots: make(chan struct{}, connsMax),
		idle:  make(chan *pgx.Conn, connsMax),
	}
}

// acquire returns an idle connection, or opens one when none is idle and
// fewer than connsMax are in use; else it waits for one to be released.
func (p *pgConnPool) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		<-p.slots
		return nil, errPostgresWalletClosed
	}
	select {
	case c := <-p.idle:
		return c, nil
	default:
	}
	c, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

// release takes c back. A connection that a failed request left inside a
// transaction is rolled back first; one that cannot be, or that pgx closed
// (a canceled context, a broken socket), or that comes back to a closed
// pool, is closed.
func (p *pgConnPool) release(c *pgx.Conn) {
	defer func() { <-p.slots }()
	if !c.IsClosed() && c.PgConn().TxStatus() != 'I' {
		ctx, cancel := context.WithTimeout(context.Background(), postgresRollbackTimeout)
		if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
			_ = c.Close(ctx)
		}
		cancel()
	}
	if c.IsClosed() {
		return
	}
	p.mu.Lock()
	if !p.closed {
		p.idle <- c // never blocks: this connection's slot is still held
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		_ = c.Close(context.Background())
	}
}

// close closes the idle connections, and makes release close the others.
func (p *pgConnPool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	for {
		select {
		case c := <-p.idle:
			_ = c.Close(context.Background())
		default:
			return
		}
	}
}
