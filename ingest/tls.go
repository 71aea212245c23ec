package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// TLS on the API listener. The certificate, its key and the CA that client
// certificates must chain to (optional: when set, every client must show
// one) are files; CertReloader serves them and loads them again when they
// change (Watch polls their size and time) or when told (Reload, on
// SIGHUP), so a renewed certificate takes over without a restart. A set of
// files that does not load (a certificate renewed before its key) keeps
// the previous one and is retried at the next change.

// TLSFiles name the API listener's certificate and key (PEM) and,
// optionally, the CA bundle of the client certificates it requires.
type TLSFiles struct {
	Cert, Key, ClientCA string
}

// CertReloader holds the listener's TLS configuration.
type CertReloader struct {
	files TLSFiles
	log   *slog.Logger
	cur   atomic.Pointer[tlsState]
}

// tlsState is one loaded set of files.
type tlsState struct {
	cfg   *tls.Config
	stamp string // the files' sizes and times when loaded
}

// NewCertReloader loads the files; it fails when they do not.
func NewCertReloader(f TLSFiles, log *slog.Logger) (*CertReloader, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("tls: a certificate and its key are both needed")
	}
	if log == nil {
		log = slog.Default()
	}
	r := &CertReloader{files: f, log: log}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload loads the files again; on error the configuration in use stays.
func (r *CertReloader) Reload() error {
	stamp, err := r.stamp()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return fmt.Errorf("tls: %s and %s: %w", r.files.Cert, r.files.Key, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if r.files.ClientCA != "" {
		pem, err := os.ReadFile(r.files.ClientCA)
		if err != nil {
			return fmt.Errorf("tls: client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls: client CA %s holds no PEM certificate", r.files.ClientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	r.cur.Store(&tlsState{cfg: cfg, stamp: stamp})
	return nil
}

// stamp is the files' sizes and modification times.
func (r *CertReloader) stamp() (string, error) {
	s := ""
	for _, p := range []string{r.files.Cert, r.files.Key, r.files.ClientCA} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("tls: %w", err)
		}
		s += strconv.FormatInt(fi.Size(), 10) + "/" + strconv.FormatInt(fi.ModTime().UnixNano(), 10) + " "
	}
	return s, nil
}

// Config is the listener's configuration: each handshake gets the files
// loaded last.
func (r *CertReloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load().cfg, nil
		},
	}
}

// Watch loads the files again whenever they change, checking every
// interval, until ctx is done.
func (r *CertReloader) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		stamp, err := r.stamp()
		if err != nil || stamp == r.cur.Load().stamp {
			continue
		}
		if err := r.Reload(); err != nil {
			r.log.Warn("tls: the changed certificate files do not load; the previous ones stay in use", "err", err)
			continue
		}
		r.log.Info("tls: certificate reloaded", "cert", r.files.Cert)
	}
}
