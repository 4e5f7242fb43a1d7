package main

const (
	sysOpenByHandleAt = 265
	sysSetns          = 268
)
