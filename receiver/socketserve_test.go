package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestServeTakesDirectoryAndLimitsFromThePipeLine(t *testing.T) {
	line := "|/var/lib/coredump-shipper/coredump-receive -m 1G -f 10%% -t 60 /var/coredump %P %u %g %s %t %h %e\n"
	file := filepath.Join(t.TempDir(), "pipe-core_pattern")
	if err := os.WriteFile(file, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseServeArgs([]string{"-socket", "/run/cds/coredump.sock", "-fallback-file", file, "-claim-pattern"})
	if err != nil {
		t.Fatal(err)
	}
	want := limits{MaxSize: 1 << 30, Free: diskLimit{Percent: 10}, MaxUse: diskLimit{Percent: 10}, Deadline: time.Minute, DumpMode: dumpUnknown}
	if cfg.dir != "/var/coredump" || cfg.lim != want || cfg.fallback != line[:len(line)-1] || !cfg.claimPattern {
		t.Fatalf("config %+v", cfg)
	}
}

func TestServeRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"/var/coredump"}, // no socket
		{"-socket", "relative.sock", "/var/coredump"}, // relative socket
		{"-socket", "/run/x.sock", "relative"},        // relative DIR
		{"-socket", "/run/x.sock", "-t", "0", "/d"},   // deadline
		{"-socket", "/run/x.sock", "-max-clients", "0", "/d"},
		{"-socket", "/run/x.sock", "-fallback-file", "/nonexistent"},
	} {
		if _, err := parseServeArgs(args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if _, err := pipeLineArgs("@@/run/x.sock"); err == nil {
		t.Error("a socket pattern taken for a pipe line")
	}
}
