//go:build linux

package chtest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"
	"github.com/meterd/meterd/sink/chtest"
	"github.com/shopspring/decimal"
)

// TestMain shares one server among the tests that call chtest.Start.
func TestMain(m *testing.M) { chtest.Main(m) }

// TestShared writes and reads rows through Conn on the shared server, in a
// database of its own, with the column types of the ledger.
func TestShared(t *testing.T) {
	s := chtest.Start(t)
	if s.Version == "" || s.Version[0] < '0' || s.Version[0] > '9' {
		t.Fatalf("Version = %q, want it to start with a digit", s.Version)
	}
	t.Logf("ClickHouse %s at %s", s.Version, s.Addr)
	if err := s.Stop(); err == nil && os.Getenv(chtest.EnvAddr) == "" {
		t.Fatal("Stop on the shared server: no error")
	}

	db := s.Database(t)
	s.Query(t, "CREATE TABLE "+db+".ledger (seq UInt64, amount Decimal(38, 9), at DateTime) ENGINE = MergeTree ORDER BY seq")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := s.Conn(t)
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".ledger (seq, amount, at)")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range 3 {
		amount := decimal.New(int64(i+1)*1_000_000_001, -9) // no trailing zeros: 18.16 prints them, current releases do not
		if err := batch.Append(uint64(i+1), amount, at.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}

	rows, err := conn.Query(ctx, "SELECT seq, amount, at FROM "+db+".ledger ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			seq    uint64
			amount decimal.Decimal
			got    time.Time
		)
		if err := rows.Scan(&seq, &amount, &got); err != nil {
			t.Fatal(err)
		}
		want := decimal.New(int64(n+1)*1_000_000_001, -9)
		if seq != uint64(n+1) || !amount.Equal(want) || !got.Equal(at.Add(time.Duration(n)*time.Second)) {
			t.Errorf("row %d = %d %s %s, want %d %s %s", n, seq, amount, got, n+1, want, at.Add(time.Duration(n)*time.Second))
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("read %d rows, want 3", n)
	}
	if got, want := s.Query(t, "SELECT seq, amount FROM "+db+".ledger ORDER BY seq"), "1\t1.000000001\n2\t2.000000002\n3\t3.000000003"; got != want {
		t.Errorf("Query = %q, want %q", got, want)
	}
}

// TestDatabaseIsolation checks that two tests' databases differ and that a
// database is gone after its test.
func TestDatabaseIsolation(t *testing.T) {
	s := chtest.Start(t)
	var first string
	t.Run("a", func(t *testing.T) { first = s.Database(t) })
	second := s.Database(t)
	if first == second {
		t.Fatalf("two tests got database %q", first)
	}
	if got := s.Query(t, "SELECT count() FROM system.databases WHERE name = '"+first+"'"); got != "0" {
		t.Errorf("database %s of a finished test: count = %s, want 0", first, got)
	}
}

// TestRestartKill writes through a private server, restarts it, kills it and
// starts a new one on the same directory: the rows survive each.
func TestRestartKill(t *testing.T) {
	if os.Getenv(chtest.EnvAddr) != "" {
		t.Skip("needs a private server; " + chtest.EnvAddr + " is set")
	}
	dir := t.TempDir()
	s := chtest.StartInDir(t, dir)
	s.Query(t, "CREATE TABLE default.t (k UInt64, v String) ENGINE = MergeTree ORDER BY k")
	s.Query(t, "INSERT INTO default.t VALUES (1, 'one'), (2, 'two')")
	const want = "1\tone\n2\ttwo"

	addr := s.Addr
	start := time.Now()
	s.Restart(t)
	t.Logf("restart: %v", time.Since(start))
	if s.Addr != addr {
		t.Errorf("Addr after Restart = %s, want %s", s.Addr, addr)
	}
	if got := s.Query(t, "SELECT k, v FROM default.t ORDER BY k"); got != want {
		t.Fatalf("after Restart: %q, want %q", got, want)
	}

	s.Query(t, "INSERT INTO default.t VALUES (3, 'three')")
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s accepts connections after Kill", s.Addr)
	}
	start = time.Now()
	s2 := chtest.StartInDir(t, dir)
	t.Logf("start after kill: %v", time.Since(start))
	if got := s2.Query(t, "SELECT k, v FROM default.t ORDER BY k"); got != want+"\n3\tthree" {
		t.Fatalf("after Kill and StartInDir: %q, want %q", got, want+"\n3\tthree")
	}
	if err := s2.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s2.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestTLSAndPassword: a server with TLS and a user with a password serves
// that user over TLS with the CA of CAFile, and refuses a wrong password, a
// client that does not trust the certificate, and plain TCP on the TLS port;
// all of it again after a restart.
func TestTLSAndPassword(t *testing.T) {
	if os.Getenv(chtest.EnvAddr) != "" {
		t.Skip("needs a private server; " + chtest.EnvAddr + " is set")
	}
	s := chtest.StartWith(t, t.TempDir(), chtest.Options{TLS: true, User: "meterd", Password: "pa55-word"})
	if s.SecureAddr == "" || s.CAFile == "" {
		t.Fatalf("SecureAddr %q, CAFile %q: want both", s.SecureAddr, s.CAFile)
	}
	tc, err := s.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	login := func(tc *tls.Config, password string) (string, error) {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.SecureAddr}, TLS: tc, DialTimeout: 5 * time.Second,
			ReadTimeout: 10 * time.Second, Auth: clickhouse.Auth{Database: "default", Username: "meterd", Password: password}})
		if err != nil {
			return "", err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var version string // 18.16 has no currentUser(); the login is the point
		err = conn.QueryRow(ctx, "SELECT version()").Scan(&version)
		return version, err
	}
	check := func(when string) {
		t.Helper()
		if version, err := login(tc, "pa55-word"); err != nil || version != s.Version {
			t.Errorf("%s: TLS with the password: version %q, %v", when, version, err)
		}
		var ex *proto.Exception
		if _, err := login(tc, "wrong"); !errors.As(err, &ex) || ex.Code != 193 {
			t.Errorf("%s: a wrong password: %v, want exception 193 (WRONG_PASSWORD)", when, err)
		}
		var unknown x509.UnknownAuthorityError
		if _, err := login(&tls.Config{MinVersion: tls.VersionTLS12}, "pa55-word"); !errors.As(err, &unknown) {
			t.Errorf("%s: a client without the CA: %v, want an unknown authority", when, err)
		}
		if _, err := login(nil, "pa55-word"); err == nil {
			t.Errorf("%s: plain TCP on the TLS port: no error", when)
		}
	}
	check("at start")
	s.Restart(t)
	check("after a restart")
}
