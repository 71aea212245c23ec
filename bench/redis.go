package bench

// The Redis baseline: the wallet a team builds on Redis. Each customer has
// three keys, with the customer as hash tag so that a cluster keeps them in
// one slot (a script may only touch keys of one slot):
//
//	w:{customer}  string  the balance, micro-USD (an int64, as INCRBY keeps it)
//	e:{customer}  hash    event id -> the charge it took: the idempotency record
//	l:{customer}  list    the ledger, one "event_id amount" row per charge, in order
//
// The ledger is a list, not a stream: a row needs no id or time of its own,
// and RPUSH/LRANGE is all a reader must know. One Lua script (redisApplyLua)
// applies one event; a request sends one EVALSHA per event, all pipelined on
// one connection, and the replies are read in order.
//
// Why an answered charge is on disk with appendfsync always, step by step
// (Redis 7.0, the version Debian ships; src/server.c beforeSleep, src/aof.c
// flushAppendOnlyFile and feedAppendOnlyFile, src/ae.h AE_BARRIER):
//
//  1. A script runs whole: the single command thread runs nothing else
//     between its read of the balance and its last write, so the check and
//     the deduction cannot interleave with another event's.
//  2. Its writes are propagated as their effects (the only mode since 7.0),
//     wrapped in MULTI/EXEC, into server.aof_buf, in memory; the reply goes to
//     the client's output buffer, not to its socket.
//  3. Before the event loop sleeps again, beforeSleep calls
//     flushAppendOnlyFile, and only after it sends the pending replies; the
//     source says the order "must be done before
//     handleClientsWithPendingWrites... in case of appendfsync=always". With
//     appendfsync always a client's socket is written with AE_BARRIER, so it
//     is never written in the same loop iteration that read its command.
//  4. With appendfsync always, flushAppendOnlyFile write()s the buffer and
//     calls fdatasync on the AOF itself, synchronously; a failed write or
//     fsync makes the server exit rather than answer ("we have a contract
//     with the user that on acknowledged or observed writes are synced on
//     disk").
//  5. So a reply on the wire means the script's effects are on disk; strace
//     of 7.0.15 shows, per EVAL: read the command, write the AOF, fdatasync
//     the AOF, write the reply. The fsync is a group commit: one per loop
//     iteration, for every command of every client read in it. A duplicate
//     or rejected answer writes nothing, and what it read was flushed before
//     any reply of the iteration that wrote it.
//  6. On restart Redis replays the AOF. A crash in the middle of a write
//     leaves a MULTI without its EXEC at the tail, which is cut off
//     ("Revert incomplete MULTI/EXEC transaction", with aof-load-truncated
//     yes): a script is applied whole or not at all.
//
// The chain needs no-appendfsync-on-rewrite no (with yes Redis skips the
// fsync while an AOF rewrite or RDB child runs) and aof-load-truncated yes
// (with no a torn tail stops the restart): both Redis's defaults, both
// passed as flags so that no configuration can change them.
//
// With appendfsync everysec, step 4 becomes a background fsync at most once a
// second, and the write() itself may be postponed up to 2 s while one runs
// (replies still go out): an answered charge can be lost, on a power cut or
// an OS crash, and even on a kill of the process. "redis-everysec" is
// reported for scale, labelled not durable per event.
//
// Amounts are int64 micro-USD on the Go side and in Redis (DECRBY is int64
// arithmetic on the decimal text). Lua 5.1 has only doubles, so the one
// comparison the script makes (balance >= charge) is exact only for integers
// below 2^53: every amount is bounded by redisAmountMicroMax (9 billion USD),
// checked here before it is sent and by the script on what it reads. Amounts
// cross the wire, and come back, as decimal text.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// The fsync policies StartRedis takes.
const (
	RedisFsyncAlways   = "always"   // fsync before each reply: durable per event
	RedisFsyncEverysec = "everysec" // fsync once a second: NOT durable per event
)

// The bounds of the Redis baseline. A crossed bound is an error naming it.
const (
	redisAmountMicroMax    = 1<<53 - 1             // a balance or charge; Lua compares exactly below 2^53
	redisRequestEventsMax  = 10_000                // events in one Apply (meterd's EventsMax)
	redisIDBytesMax        = 128                   // an event or customer id (meterd's IDLenMax)
	redisSetupPipelineMax  = 10_000                // customers in one Setup pipeline
	redisLedgerPageRowsMax = 10_000                // ledger rows read per LRANGE
	redisConnsDefault      = 16                    // the wallet's connections, without RedisConns
	redisConnsMax          = 1024                  // RedisConns
	redisStartWaitMax      = 30 * time.Second      // from exec to a server that answers PING
	redisStartAttemptsMax  = 3                     // fresh ports tried when one was taken under us
	redisStopWaitMax       = 20 * time.Second      // from SIGTERM to exit, before SIGKILL
	redisKillWaitMax       = 10 * time.Second      // from SIGKILL to exit
	redisProbeTimeout      = 2 * time.Second       // one readiness probe
	redisProbeInterval     = 20 * time.Millisecond // between readiness probes
	redisDialTimeout       = 5 * time.Second       // the wallet's connections
	redisIOTimeout         = 60 * time.Second      // one read or write of the wallet (an fsync can be slow)
	redisLogTailBytesMax   = 4 << 10               // of the server's log quoted in an error
	redisServerBinary      = "redis-server"        // looked up in PATH, then /usr/bin
	redisServerMissingHelp = "install it with `apt-get install redis-server` (make test-deps does)"
	redisServerLogName     = "redis-server.log" // in the server's dir
)

// RedisServer is a private redis-server process: its own loopback port and
// directory, started by StartRedis and stopped by its owner.
type RedisServer struct {
	addr  string
	dir   string
	fsync string
	serverProc
}

// StartRedis starts redis-server on dir (created if missing) with the AOF on
// and appendfsync fsync (RedisFsyncAlways or RedisFsyncEverysec), on a free
// port of 127.0.0.1, and returns once that very process answers PING (after
// replaying the AOF a server before it left in dir). No configuration file
// is read: every setting the guarantee depends on is a flag.
func StartRedis(dir string, fsync string) (*RedisServer, error) {
	if fsync != RedisFsyncAlways && fsync != RedisFsyncEverysec {
		return nil, fmt.Errorf("redis: appendfsync %q: want %q or %q", fsync, RedisFsyncAlways, RedisFsyncEverysec)
	}
	bin, err := findRedisServer(redisServerBinary)
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	var lastErr error
	for range redisStartAttemptsMax {
		s, err := launchRedis(bin, dir, fsync)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errRedisPortTaken) {
			break
		}
	}
	return nil, lastErr
}

// findRedisServer returns the path of the named binary: from PATH, else
// from /usr/bin, where Debian puts it.
func findRedisServer(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/bin", name)
	if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return p, nil
	}
	return "", fmt.Errorf("redis: %s not found in PATH or /usr/bin: %s", name, redisServerMissingHelp)
}

var errRedisPortTaken = errors.New("the port was taken by another process")

// launchRedis starts one redis-server on a port that was free a moment ago,
// and waits until it answers.
func launchRedis(bin, dir, fsync string) (*RedisServer, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("redis: a free port: %w", err)
	}
	logPath := filepath.Join(dir, redisServerLogName)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	logStart, _ := logFile.Seek(0, io.SeekEnd)

	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", dir,
		"--appendonly", "yes",
		"--appendfsync", fsync,
		"--no-appendfsync-on-rewrite", "no", // step 4 holds during rewrites too
		"--aof-load-truncated", "yes", // step 6: a torn last script is dropped on restart
		"--save", "", // no RDB snapshots: the AOF is the one durable copy
		"--protected-mode", "no",
		"--daemonize", "no",
		"--logfile", "", // to stdout, which is the log file
	)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("redis: starting %s: %w", bin, err)
	}
	s := &RedisServer{
		addr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		dir:   dir,
		fsync: fsync,
	}
	s.startReaping("redis-server", cmd)
	if err := s.waitReady(); err != nil {
		_ = s.Kill()
		log := logTail(logPath, logStart, redisLogTailBytesMax)
		if strings.Contains(log, "Address already in use") {
			err = fmt.Errorf("%w: %v", errRedisPortTaken, err)
		}
		return nil, fmt.Errorf("redis-server in %s (%s): %w\n--- %s ---\n%s", dir, s.addr, err, logPath, log)
	}
	return s, nil
}

// freeLoopbackPort returns a port of 127.0.0.1 that nothing listened on a
// moment ago.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitReady waits until the server answers PING (it answers LOADING while it
// replays the AOF), and checks that the answer came from this process, not
// from another server that took the port.
func (s *RedisServer) waitReady() error {
	c := redis.NewClient(redisOptions(s.addr, 1, redisProbeTimeout, redisProbeTimeout))
	defer c.Close()
	deadline := time.Now().Add(redisStartWaitMax)
	lastErr := errors.New("no answer yet")
	for {
		select {
		case <-s.done:
			return fmt.Errorf("exited before it answered (%v)", s.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %v (redisStartWaitMax): %v", redisStartWaitMax, lastErr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), redisProbeTimeout)
		info, err := c.Ping(ctx).Result()
		if err == nil {
			info, err = c.Info(ctx, "server").Result()
		}
		cancel()
		if err == nil {
			if pid := redisInfoField(info, "process_id"); pid != strconv.Itoa(s.cmd.Process.Pid) {
				return fmt.Errorf("%w: %s answers as pid %s, not %d", errRedisPortTaken, s.addr, pid, s.cmd.Process.Pid)
			}
			return nil
		}
		lastErr = err
		time.Sleep(redisProbeInterval)
	}
}

// redisInfoField returns the value of "name:value" in an INFO answer.
func redisInfoField(info, name string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), name+":"); ok {
			return v
		}
	}
	return ""
}

// Addr returns the server's host:port.
func (s *RedisServer) Addr() string { return s.addr }

// Dir returns the server's directory: its log, and the AOF under
// appendonlydir/.
func (s *RedisServer) Dir() string { return s.dir }

// Fsync returns the server's appendfsync policy.
func (s *RedisServer) Fsync() string { return s.fsync }

// Stop shuts the server down as SHUTDOWN would (SIGTERM: the AOF is flushed
// and fsynced, then it exits), and kills it if it has not exited within
// redisStopWaitMax. Stopping a stopped server does nothing.
func (s *RedisServer) Stop() error { return s.stopOnce(syscall.SIGTERM, redisStopWaitMax, s.kill) }

// Kill kills the server with SIGKILL, as a crash would, and waits until it
// is gone. Killing a stopped server does nothing.
func (s *RedisServer) Kill() error { return s.killOnce(s.kill) }

func (s *RedisServer) kill() error {
	select {
	case <-s.done:
		return nil // reaped: its pid may be someone else's now
	default:
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
		return nil
	case <-time.After(redisKillWaitMax):
		return fmt.Errorf("redis-server pid %d still running %v after SIGKILL (redisKillWaitMax)", s.PID(), redisKillWaitMax)
	}
}

// redisOptions states every client setting the wallet depends on.
// MaxRetries -1: go-redis would otherwise resend a pipeline whose answer was
// lost, and the resent events would come back duplicate where they were
// charged; the caller sees the error and decides. Protocol 2: RESP2, which
// every Redis speaks; the replies the wallet reads are the same in RESP3.
func redisOptions(addr string, conns int, dialTimeout, ioTimeout time.Duration) *redis.Options {
	return &redis.Options{
		Network:                  "tcp",
		Addr:                     addr,
		Protocol:                 2,
		MaxRetries:               -1,
		DialTimeout:              dialTimeout,
		ReadTimeout:              ioTimeout,
		WriteTimeout:             ioTimeout,
		ContextTimeoutEnabled:    true,
		PoolSize:                 conns,
		MaxActiveConns:           conns,
		PipelinePoolSize:         -1, // pipelines share the one bounded pool
		PoolTimeout:              ioTimeout,
		DisableIdentity:          true, // no CLIENT SETINFO on connect
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// redisApplyLua applies one event. KEYS: the wallet, the seen ids, the
// ledger; ARGV: the event id, the charge (decimal micro-USD, 0 to
// redisAmountMicroMax). It answers {"charged", charge}, {"duplicate",
// original charge} or {"rejected", "0"}, and writes only when it charges.
const redisApplyLua = `
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen then
  return {'duplicate', seen}
end
local balance = redis.call('GET', KEYS[1])
if not balance then
  return redis.error_reply('ERR meterd-bench: no wallet ' .. KEYS[1])
end
local b, c = tonumber(balance), tonumber(ARGV[2])
if b == nil or b < 0 or b >= 2^53 then
  return redis.error_reply('ERR meterd-bench: balance of ' .. KEYS[1] .. ' out of bounds: ' .. balance)
end
if b < c then
  return {'rejected', '0'}
end
redis.call('DECRBY', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. ARGV[2])
return {'charged', ARGV[2]}
`

// RedisWallet is the Redis baseline under test: a bench.System over a
// go-redis client.
type RedisWallet struct {
	label string
	pid   int
	c     *redis.Client
	sha   string // of redisApplyLua, loaded by NewRedisWallet
}

// RedisOption is an option of NewRedisWallet.
type RedisOption func(*redisWalletOptions)

type redisWalletOptions struct {
	pid   int
	conns int
}

// RedisPID names the server's process, whose CPU counts as the wallet's
// (RedisServer.PID).
func RedisPID(pid int) RedisOption { return func(o *redisWalletOptions) { o.pid = pid } }

// RedisConns sets how many connections the wallet opens at most (default
// 16): one per concurrent Apply.
func RedisConns(n int) RedisOption { return func(o *redisWalletOptions) { o.conns = n } }

// NewRedisWallet connects to the Redis at addr, checks that it keeps an AOF
// with appendfsync always or everysec, and loads the script. label is the
// Name in reports: "redis-always", "redis-everysec".
func NewRedisWallet(addr string, label string, opts ...RedisOption) (*RedisWallet, error) {
	if label == "" {
		return nil, errors.New("redis wallet: empty label")
	}
	o := redisWalletOptions{conns: redisConnsDefault}
	for _, opt := range opts {
		opt(&o)
	}
	if o.conns < 1 || o.conns > redisConnsMax {
		return nil, fmt.Errorf("redis wallet: %d connections: want 1 to %d (redisConnsMax)", o.conns, redisConnsMax)
	}
	w := &RedisWallet{label: label, pid: o.pid}
	w.c = redis.NewClient(redisOptions(addr, o.conns, redisDialTimeout, redisIOTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), redisDialTimeout)
	defer cancel()
	if err := w.checkServer(ctx); err != nil {
		_ = w.c.Close()
		return nil, fmt.Errorf("redis wallet at %s: %w", addr, err)
	}
	sha, err := w.c.ScriptLoad(ctx, redisApplyLua).Result()
	if err != nil {
		_ = w.c.Close()
		return nil, fmt.Errorf("redis wallet at %s: SCRIPT LOAD: %w", addr, err)
	}
	w.sha = sha
	return w, nil
}

// checkServer refuses a server that would not keep the charges: no AOF, or
// an appendfsync of "no".
func (w *RedisWallet) checkServer(ctx context.Context) error {
	for _, c := range []struct {
		name string
		want []string
	}{
		{"appendonly", []string{"yes"}},
		{"appendfsync", []string{RedisFsyncAlways, RedisFsyncEverysec}},
	} {
		got, err := w.c.ConfigGet(ctx, c.name).Result()
		if err != nil {
			return fmt.Errorf("CONFIG GET %s: %w", c.name, err)
		}
		if !slices.Contains(c.want, got[c.name]) {
			return fmt.Errorf("%s is %q: want one of %q", c.name, got[c.name], c.want)
		}
	}
	return nil
}

func (w *RedisWallet) Name() string { return w.label }

func (w *RedisWallet) PIDs() []int {
	if w.pid == 0 {
		return nil
	}
	return []int{w.pid}
}

func (w *RedisWallet) Close() error { return w.c.Close() }

// redisKeys returns the customer's wallet, seen-ids and ledger keys, in the
// order redisApplyLua takes them.
func redisKeys(customer string) []string {
	tag := "{" + customer + "}"
	return []string{"w:" + tag, "e:" + tag, "l:" + tag}
}

// checkRedisID checks an event or customer id against redisIDBytesMax.
func checkRedisID(what, id string) error {
	if id == "" || len(id) > redisIDBytesMax {
		return fmt.Errorf("%s %q: want 1 to %d bytes (redisIDBytesMax)", what, id, redisIDBytesMax)
	}
	return nil
}

// Setup creates each customer's wallet with balance micro-USD, pipelined.
// A customer that already has a wallet keeps it (SET NX), as a repeated
// Setup of meterd leaves a customer's top-up alone. With appendfsync always
// the wallets are on disk when Setup returns.
func (w *RedisWallet) Setup(ctx context.Context, customers []string, balance int64) error {
	if balance < 0 || balance > redisAmountMicroMax {
		return fmt.Errorf("redis wallet: balance %d: want 0 to %d (redisAmountMicroMax)", balance, int64(redisAmountMicroMax))
	}
	for _, c := range customers {
		if err := checkRedisID("customer", c); err != nil {
			return fmt.Errorf("redis wallet: %w", err)
		}
	}
	text := strconv.FormatInt(balance, 10)
	for start := 0; start < len(customers); start += redisSetupPipelineMax {
		part := customers[start:min(start+redisSetupPipelineMax, len(customers))]
		pipe := w.c.Pipeline()
		for _, c := range part {
			pipe.SetNX(ctx, redisKeys(c)[0], text, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis wallet: setup: %w", err)
		}
	}
	return nil
}

// Apply sends one EVALSHA of redisApplyLua per event, in one pipeline, and
// reads the answers in order. An error for any event is the request's error
// (the events before and after it may have been applied: resending is safe).
func (w *RedisWallet) Apply(ctx context.Context, events []Event, results []Result) error {
	if err := checkRedisRequest(events, results); err != nil {
		return fmt.Errorf("redis wallet: %w", err)
	}
	pipe := w.c.Pipeline()
	cmds := make([]*redis.Cmd, len(events))
	for i := range events {
		e := &events[i]
		cmds[i] = pipe.EvalSha(ctx, w.sha, redisKeys(e.Customer), e.ID, strconv.FormatInt(e.Charge, 10))
	}
	_, execErr := pipe.Exec(ctx)
	if execErr != nil && !isRedisReplyError(execErr) {
		return fmt.Errorf("redis wallet: request of %d events: %w", len(events), execErr) // no answer
	}
	for i, cmd := range cmds {
		r, err := redisResult(cmd)
		if err != nil {
			return fmt.Errorf("redis wallet: event %d (%s of %s): %w", i, events[i].ID, events[i].Customer, err)
		}
		results[i] = r
	}
	if execErr != nil {
		return fmt.Errorf("redis wallet: %w", execErr) // every reply was read, yet the pipeline failed
	}
	return nil
}

// isRedisReplyError reports whether err is an error reply of the server (the
// script refused one event), not a failure of the connection.
func isRedisReplyError(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply) && !errors.Is(err, redis.Nil)
}

// checkRedisRequest checks a request against the bounds before anything is
// sent.
func checkRedisRequest(events []Event, results []Result) error {
	if len(results) != len(events) {
		return fmt.Errorf("%d results for %d events", len(results), len(events))
	}
	if len(events) > redisRequestEventsMax {
		return fmt.Errorf("%d events: at most %d per request (redisRequestEventsMax)", len(events), redisRequestEventsMax)
	}
	for i := range events {
		e := &events[i]
		if err := checkRedisID("event id", e.ID); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if err := checkRedisID("customer", e.Customer); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if e.Charge < 0 || e.Charge > redisAmountMicroMax {
			return fmt.Errorf("event %d (%s): charge %d: want 0 to %d (redisAmountMicroMax)", i, e.ID, e.Charge, int64(redisAmountMicroMax))
		}
	}
	return nil
}

// redisResult reads one answer of redisApplyLua.
func redisResult(cmd *redis.Cmd) (Result, error) {
	v, err := cmd.Slice()
	if err != nil {
		return Result{}, err
	}
	if len(v) != 2 {
		return Result{}, fmt.Errorf("script answered %v", v)
	}
	status, _ := v[0].(string)
	text, _ := v[1].(string)
	charge, err := strconv.ParseInt(text, 10, 64)
	if err != nil || charge < 0 {
		return Result{}, fmt.Errorf("script answered %v: charge %q", v, text)
	}
	switch status {
	case "charged":
		return Result{Status: StatusCharged, Charge: charge}, nil
	case "duplicate":
		return Result{Status: StatusDuplicate, Charge: charge}, nil
	case "rejected":
		return Result{Status: StatusRejected}, nil
	}
	return Result{}, fmt.Errorf("script answered %v: status %q", v, status)
}

// Balance reads the customer's wallet.
func (w *RedisWallet) Balance(ctx context.Context, customer string) (int64, error) {
	text, err := w.c.Get(ctx, redisKeys(customer)[0]).Result()
	if errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("redis wallet: no wallet for %s", customer)
	}
	if err != nil {
		return 0, fmt.Errorf("redis wallet: balance of %s: %w", customer, err)
	}
	b, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("redis wallet: balance of %s: %w", customer, err)
	}
	return b, nil
}

// Ledger reads the customer's ledger list, redisLedgerPageRowsMax rows at a
// time, in the order the charges were applied.
func (w *RedisWallet) Ledger(ctx context.Context, customer string) ([]LedgerRow, error) {
	key := redisKeys(customer)[2]
	var rows []LedgerRow
	for start := int64(0); ; start += redisLedgerPageRowsMax {
		page, err := w.c.LRange(ctx, key, start, start+redisLedgerPageRowsMax-1).Result()
		if err != nil {
			return nil, fmt.Errorf("redis wallet: ledger of %s: %w", customer, err)
		}
		for _, row := range page {
			r, err := parseRedisLedgerRow(row)
			if err != nil {
				return nil, fmt.Errorf("redis wallet: ledger of %s: %w", customer, err)
			}
			rows = append(rows, r)
		}
		if len(page) < redisLedgerPageRowsMax {
			return rows, nil
		}
	}
}

// parseRedisLedgerRow reads "event_id amount"; the id may hold spaces, the
// amount does not.
func parseRedisLedgerRow(row string) (LedgerRow, error) {
	i := strings.LastIndexByte(row, ' ')
	if i <= 0 {
		return LedgerRow{}, fmt.Errorf("row %q: want \"event_id amount\"", row)
	}
	amount, err := strconv.ParseInt(row[i+1:], 10, 64)
	if err != nil || amount < 0 {
		return LedgerRow{}, fmt.Errorf("row %q: amount: want a non-negative integer", row)
	}
	return LedgerRow{EventID: row[:i], Amount: amount}, nil
}
