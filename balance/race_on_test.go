//go:build race

package balance

// raceEnabled: the race detector slows the engine about tenfold, so long
// tests run smaller under it.
const raceEnabled = true
