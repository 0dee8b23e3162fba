// Command service is an SDP sample microservice. It answers every request
// with JSON naming the service, branch and commit that served it, so tests
// and people can tell which deployment a request reached through the
// gateway.
package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// feature names the feature a branch adds; files present only on feature
// branches set it.
var feature string

type reply struct {
	Service string            `json:"service"`
	Branch  string            `json:"branch"`
	Commit  string            `json:"commit"`
	Feature string            `json:"feature,omitempty"`
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Query   string            `json:"query,omitempty"`
	Body    string            `json:"body,omitempty"`
	Env     map[string]string `json:"env"`
}

// commit is the revision `go build` stamped into the binary (Go 1.18+
// records it when building inside a git checkout).
func commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			return s.Value
		}
	}
	return "unknown"
}

// selectedEnv returns the variables a sandbox environment injects (SDP_ and
// DEMO_ prefixes), so a test can see that injection reached the process
// without dumping the whole environment.
func selectedEnv() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "SDP_") || strings.HasPrefix(k, "DEMO_") {
			env[k] = v
		}
	}
	return env
}

func handler(rev string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		status := http.StatusOK
		// ?status=NNN lets gateway tests check that status codes pass
		// through the proxy unchanged.
		if s, err := strconv.Atoi(r.URL.Query().Get("status")); err == nil && s >= 200 && s <= 599 {
			status = s
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Sample-Service", service)
		w.WriteHeader(status)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(reply{
			Service: service,
			Branch:  branch,
			Commit:  rev,
			Feature: feature,
			Method:  r.Method,
			Path:    r.URL.Path,
			Query:   r.URL.RawQuery,
			Body:    string(body),
			Env:     selectedEnv(),
		})
	}
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	srv := &http.Server{
		Addr:              ":" + port,
		Handler:           handler(commit()),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// Docker stops containers with SIGTERM; shutting down on it keeps
	// `docker stop` fast instead of waiting out its timeout.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("%s (branch %s) listening on :%s", service, branch, port)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
