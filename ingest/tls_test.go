package ingest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testCA is a certificate authority made for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meterd test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a certificate of serial for the loopback server (or a
// client), returning its PEM certificate and key.
func (ca *testCA) issue(t testing.TB, serial int64, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "meterd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// writeFile writes b to path by a rename, as certificate managers do.
func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serverCertFiles writes a server certificate of serial from ca, and its
// key, into dir.
func serverCertFiles(t testing.TB, ca *testCA, dir string, serial int64) TLSFiles {
	t.Helper()
	files := TLSFiles{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}
	c, k := ca.issue(t, serial, false)
	writeFile(t, files.Cert, c)
	writeFile(t, files.Key, k)
	return files
}

// tlsEnv is an apiEnv served over TLS by a CertReloader.
func tlsEnv(t *testing.T, files TLSFiles) (*apiEnv, *CertReloader) {
	t.Helper()
	e := newAPIEnv(t, apiEnvOpts{})
	r, err := NewCertReloader(files, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(tls.NewListener(ln, r.Config()))
	e.base = "https://" + ln.Addr().String()
	return e, r
}

// TestTLSCertificateSwap: over HTTPS, a certificate renewed on disk takes
// over while clients keep sending, and no request fails.
func TestTLSCertificateSwap(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	files := serverCertFiles(t, ca, dir, 101)
	e, r := tlsEnv(t, files)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx, 20*time.Millisecond)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	var served sync.Map // serial -> true
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A new connection each time: a handshake sees the files
				// loaded last.
				client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
					TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
				res, err := client.Get(e.base + "/healthz")
				sent.Add(1)
				if err != nil || res.StatusCode != 200 {
					failed.Add(1)
					t.Errorf("a request failed during the swap: %v", err)
					if res != nil {
						res.Body.Close()
					}
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				served.Store(res.TLS.PeerCertificates[0].SerialNumber.Int64(), true)
			}
		}()
	}
	time.Sleep(150 * time.Millisecond)
	c2, k2 := ca.issue(t, 202, false)
	writeFile(t, files.Cert, c2) // the certificate first, the key a moment later
	time.Sleep(30 * time.Millisecond)
	writeFile(t, files.Key, k2)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := served.Load(int64(202)); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if _, ok := served.Load(int64(202)); !ok {
		t.Fatal("the renewed certificate was never served")
	}
	if _, ok := served.Load(int64(101)); !ok {
		t.Fatal("the first certificate was never served")
	}
	if failed.Load() != 0 || sent.Load() < 10 {
		t.Fatalf("%d of %d requests failed", failed.Load(), sent.Load())
	}
}

// TestTLSClientCertificate: with a client CA, a client without a
// certificate from it is refused at the handshake; one with is served.
func TestTLSClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, clients, other := newTestCA(t), newTestCA(t), newTestCA(t)
	files := TLSFiles{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), ClientCA: filepath.Join(dir, "clients.pem")}
	c, k := ca.issue(t, 1, false)
	writeFile(t, files.Cert, c)
	writeFile(t, files.Key, k)
	writeFile(t, files.ClientCA, clients.pem)
	e, _ := tlsEnv(t, files)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	get := func(certs []tls.Certificate) (*http.Response, error) {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
		return client.Get(e.base + "/healthz")
	}
	if res, err := get(nil); err == nil {
		res.Body.Close()
		t.Fatal("a client without a certificate was served")
	}
	oc, ok := other.issue(t, 7, true)
	ocert, _ := tls.X509KeyPair(oc, ok)
	if res, err := get([]tls.Certificate{ocert}); err == nil {
		res.Body.Close()
		t.Fatal("a client whose certificate another CA signed was served")
	}
	cc, ck := clients.issue(t, 8, true)
	ccert, err := tls.X509KeyPair(cc, ck)
	if err != nil {
		t.Fatal(err)
	}
	res, err := get([]tls.Certificate{ccert})
	if err != nil {
		t.Fatalf("a client with a certificate of the client CA: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !bytes.Contains(body, []byte("ok")) {
		t.Fatalf("a client with a certificate of the client CA: %d %s", res.StatusCode, body)
	}
	// Files that do not load leave the served configuration as it was.
	if _, err := NewCertReloader(TLSFiles{Cert: files.Cert, Key: files.ClientCA}, nil); err == nil {
		t.Fatal("a certificate with the wrong key loaded")
	}
}
