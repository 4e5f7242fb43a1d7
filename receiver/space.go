package main

import (
	"syscall"
	"unsafe"
)

const (
	// A receiver re-checks the filesystem and the directory after spending 1/grantShare of what was
	// left at the last check (never less than grantFloor): concurrent receivers, up to the kernel's
	// core_pipe_limit of them, each take a small share instead of all of it, so together they stop
	// within about grantFloor each of the floor and the cap.
	grantShare = 64
	grantFloor = 1 << 20
	// A directory with more entries than this is not counted further (it is over any sane cap).
	scanLimit = 100000
	// AT_SYMLINK_NOFOLLOW, missing from Go 1.19's syscall package on amd64.
	atSymlinkNofollow = 0x100
)

// spaceGuard enforces the free-space floor (-f) and the directory's size cap (-x) while a core is
// written, re-reading both as other receivers write beside it.
type spaceGuard struct {
	dirfd int // the core directory: its regular files count against -x
	fd    int // the core being written: fstatfs of its filesystem
	lim   limits
	grant int64 // bytes this receiver may still write before the next check
}

// allow returns "" when n more bytes may be written, else why not ("keep-free" or "max-use").
func (g *spaceGuard) allow(n int64) string {
	if !g.lim.floorSet() && !g.lim.capSet() {
		return ""
	}
	if n <= g.grant {
		g.grant -= n
		return ""
	}
	left, reason := g.left()
	if n > left {
		g.grant = 0
		return reason
	}
	g.grant = left / grantShare
	if g.grant < grantFloor {
		g.grant = grantFloor
	}
	if g.grant > left {
		g.grant = left
	}
	g.grant -= n
	return ""
}

// left is the smaller of the room above the floor and the room under the cap, and which one it is.
// A failed statfs or directory read counts as no room: the receiver runs as root and must not
// write blind.
func (g *spaceGuard) left() (int64, string) {
	var fs syscall.Statfs_t
	if err := syscall.Fstatfs(g.fd, &fs); err != nil {
		return 0, "keep-free"
	}
	total := int64(fs.Blocks) * fs.Frsize
	left, reason := int64(1<<62), "keep-free"
	if g.lim.floorSet() {
		left = int64(fs.Bavail)*fs.Frsize - g.lim.Free.resolve(total)
	}
	if g.lim.capSet() {
		used, err := directoryUse(g.dirfd)
		if err != nil {
			return 0, "max-use"
		}
		if room := g.lim.MaxUse.resolve(total) - used; room < left {
			left, reason = room, "max-use"
		}
	}
	return left, reason
}

// directoryUse is the space the directory's regular files take, in allocated blocks (cores are
// sparse), including the temporary files of receivers still writing. Links are not followed.
func directoryUse(dirfd int) (int64, error) {
	fd, err := syscall.Openat(dirfd, ".", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	buf := make([]byte, 32<<10)
	var used int64
	seen := 0
	for seen < scanLimit {
		n, err := syscall.Getdents(fd, buf)
		if err != nil {
			return 0, err
		}
		if n <= 0 {
			break
		}
		_, _, names := syscall.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			seen++
			var st syscall.Stat_t
			if lstatAt(dirfd, name, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
				continue // gone meanwhile, or not a file
			}
			used += st.Blocks * 512
		}
	}
	return used, nil
}

func lstatAt(dirfd int, name string, st *syscall.Stat_t) error {
	path, err := syscall.BytePtrFromString(name)
	if err != nil {
		return err
	}
	_, _, errno := syscall.Syscall6(sysFstatat, uintptr(dirfd), uintptr(unsafe.Pointer(path)),
		uintptr(unsafe.Pointer(st)), atSymlinkNofollow, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
