package main

// renameat2(2) has no constant in Go 1.19's syscall package for amd64, and fstatat(2) (newfstatat
// here) is not exported there.
const (
	sysRenameat2 = 316
	sysFstatat   = 262
)
