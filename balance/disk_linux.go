package balance

import (
	"os"
	"syscall"
)

// fallocate allocates n bytes to f without writing them.
func fallocate(f *os.File, n int64) error {
	return syscall.Fallocate(int(f.Fd()), 0, 0, n)
}
