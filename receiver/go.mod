module coredump-shipper/receiver

go 1.19
