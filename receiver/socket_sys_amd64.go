package main

// Go 1.19's syscall package has no numbers for these on amd64.
const (
	sysOpenByHandleAt = 304
	sysSetns          = 308
)
