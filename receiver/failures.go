package main

import (
	"encoding/json"
	"fmt"
	"syscall"
	"time"
)

const (
	// failuresDir is a spool in the core directory: one small file per core lost or cut short, which
	// the shipper counts (coredump_shipper_capture_failures_total) and removes.
	failuresDir = ".coredump-receive.failures"
	// Records waiting at most: with no shipper alive for long, the spool stops growing here.
	failuresMax   = 256
	failureFormat = 1
)

// failure is one record, read by the shipper as untrusted input.
type failure struct {
	Format    int    `json:"format"`
	Reason    string `json:"reason"`
	Time      int64  `json:"time"`
	GlobalPID int    `json:"global_pid"`
	Comm      string `json:"comm"`
	PodUID    string `json:"pod_uid,omitempty"`
	Size      int64  `json:"size"`
}

// recordFailure leaves a record for the shipper; errors are returned for the one log line, never
// fatal (the core itself matters more than its record).
func recordFailure(dirfd int, owner syscall.Stat_t, record failure) error {
	record.Format = failureFormat
	err := syscall.Mkdirat(dirfd, failuresDir, 0o700)
	if err != nil && err != syscall.EEXIST {
		return fmt.Errorf("mkdir %s: %v", failuresDir, err)
	}
	// O_NOFOLLOW: a link planted at the spool's name is refused, never followed.
	spool, err := syscall.Openat(dirfd, failuresDir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %v", failuresDir, err)
	}
	defer syscall.Close(spool)
	var st syscall.Stat_t
	if err := syscall.Fstat(spool, &st); err != nil {
		return fmt.Errorf("stat %s: %v", failuresDir, err)
	}
	if st.Uid != owner.Uid || st.Gid != owner.Gid {
		if err := syscall.Fchown(spool, int(owner.Uid), int(owner.Gid)); err != nil {
			return fmt.Errorf("chown %s: %v", failuresDir, err)
		}
	}
	if err := syscall.Fchmod(spool, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %v", failuresDir, err)
	}
	if waiting, err := countEntries(spool, failuresMax); err != nil {
		return fmt.Errorf("read %s: %v", failuresDir, err)
	} else if waiting >= failuresMax {
		return fmt.Errorf("%s holds %d records already (is the shipper running?)", failuresDir, waiting)
	}
	text, err := json.Marshal(record)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%d.%d.%x.json", record.Time, record.GlobalPID, time.Now().UnixNano())
	fd, err := syscall.Openat(spool, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s/%s: %v", failuresDir, name, err)
	}
	defer syscall.Close(fd)
	for _, step := range []func() error{
		func() error { _, err := syscall.Write(fd, text); return err },
		func() error { return syscall.Fchown(fd, int(owner.Uid), int(owner.Gid)) },
	} {
		if err := step(); err != nil {
			syscall.Unlinkat(spool, name)
			return fmt.Errorf("write %s/%s: %v", failuresDir, name, err)
		}
	}
	return nil
}

// countEntries counts a directory's entries (without . and ..), stopping at limit.
func countEntries(dirfd int, limit int) (int, error) {
	fd, err := syscall.Openat(dirfd, ".", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	buf := make([]byte, 8<<10)
	count := 0
	for count < limit {
		n, err := syscall.Getdents(fd, buf)
		if err != nil {
			return 0, err
		}
		if n <= 0 {
			break
		}
		_, found, _ := syscall.ParseDirent(buf[:n], -1, nil)
		count += found
	}
	return count, nil
}
