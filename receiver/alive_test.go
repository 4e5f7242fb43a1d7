package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestShipperAlive(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	beat := filepath.Join(dir, "heartbeat")
	if alive, _ := shipperAlive(dir, beat, 0, now); !alive {
		t.Fatal("without -a every core is stored")
	}
	if alive, _ := shipperAlive(dir, beat, time.Hour, now); alive {
		t.Fatal("no heartbeat: no shipper alive")
	}
	if err := os.WriteFile(beat, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if alive, _ := shipperAlive(dir, beat, time.Hour, now); !alive {
		t.Fatal("a fresh heartbeat: alive")
	}
	old := now.Add(-2 * time.Hour)
	if err := os.Chtimes(beat, old, old); err != nil {
		t.Fatal(err)
	}
	if alive, age := shipperAlive(dir, beat, time.Hour, now); alive || age < time.Hour {
		t.Fatalf("a heartbeat 2h old with -a 1h: alive=%v age=%v", alive, age)
	}
	// A link named like the heartbeat is not one, whatever it points at.
	os.Remove(beat)
	fresh := filepath.Join(dir, "fresh")
	if err := os.WriteFile(fresh, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fresh, beat); err != nil {
		t.Fatal(err)
	}
	if alive, _ := shipperAlive(dir, beat, time.Hour, now); alive {
		t.Fatal("a symlink is not a heartbeat")
	}
}

func TestAliveFlag(t *testing.T) {
	defer func() { aliveWindow = 0 }()
	if _, _, err := parseArgs([]string{"-a", "1h", "/var/coredump", "4242", "0", "0", "11", "1700000000", "h", "e"}); err != nil {
		t.Fatal(err)
	}
	if aliveWindow != time.Hour {
		t.Fatalf("-a 1h parsed as %v", aliveWindow)
	}
}
