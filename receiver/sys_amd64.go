package main

// renameat2(2) has no constant in Go 1.19's syscall package for amd64.
const sysRenameat2 = 316
