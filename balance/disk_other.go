//go:build !linux

package balance

import (
	"errors"
	"os"
)

// fallocate is Linux's; elsewhere the reserve is written with zeros.
func fallocate(f *os.File, n int64) error { return errors.ErrUnsupported }
