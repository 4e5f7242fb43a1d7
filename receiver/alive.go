package main

// With no shipper alive, cores stored here would never be shipped nor deleted: after an uninstall
// that could not put the node back (a node that was down, `helm uninstall --no-hooks`) or with the
// shipper down for long, they would only fill the disk to the floor. The shipper touches
// <receiver's directory>/alive/heartbeat every minute (node setup gives it that one subdirectory);
// with -a WINDOW, a receiver that finds the heartbeat missing or older than WINDOW stores nothing.

import (
	"flag"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// heartbeatPath is relative to the directory of the receiver's own executable (root-owned).
const heartbeatPath = "alive/heartbeat"

// aliveWindow is -a: how long after the shipper's last heartbeat cores are still stored (0: always).
var aliveWindow time.Duration

func registerAliveFlag(flags *flag.FlagSet) {
	flags.DurationVar(&aliveWindow, "a", 0, "store cores only while the shipper's heartbeat is younger than this (e.g. 1h; 0: always)")
}

// shipperAlive reports whether the heartbeat is a regular file owned by DIR's owner (the shipper)
// and touched within the window, and its age (-1: none). It never follows a link.
func shipperAlive(dir, heartbeat string, window time.Duration, now time.Time) (bool, time.Duration) {
	if window <= 0 {
		return true, 0
	}
	var dirStat, beat syscall.Stat_t
	if syscall.Stat(dir, &dirStat) != nil || syscall.Lstat(heartbeat, &beat) != nil {
		return false, -1
	}
	if beat.Mode&syscall.S_IFMT != syscall.S_IFREG || beat.Uid != dirStat.Uid {
		return false, -1
	}
	age := now.Sub(time.Unix(int64(beat.Mtim.Sec), int64(beat.Mtim.Nsec)))
	return age <= window, age
}

// dropIfOrphaned ends the run, storing nothing, when no shipper has been alive within the window.
func dropIfOrphaned(c crash) {
	if aliveWindow <= 0 {
		return
	}
	heartbeat := heartbeatPath
	if exe, err := os.Executable(); err == nil {
		heartbeat = filepath.Join(filepath.Dir(exe), heartbeatPath)
	}
	alive, age := shipperAlive(c.Dir, heartbeat, aliveWindow, time.Now())
	if alive {
		return
	}
	since := "no heartbeat"
	if age >= 0 {
		since = "last heartbeat " + age.Round(time.Second).String() + " ago"
	}
	logf("pid %d (%s): core not stored: no shipper alive (%s at %s, -a %s)", c.GlobalPID, c.Comm, since, heartbeat, aliveWindow)
	os.Exit(exitOK)
}
