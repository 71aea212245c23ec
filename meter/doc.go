// Package meter prices usage events.
//
// It holds the pricing document of the meterd contract (assets with a scale,
// prices with per-event and per-field components, package sizes, dimension
// maps with a "*" fallback, top-up offers), validates it with precise errors,
// and rates one event into charges as a pure function: no clock, no I/O, no
// goroutines.
//
// Money is exact. Amounts are integers in an asset's smallest unit
// (10^-scale). Rating keeps 18 more decimal digits below that unit (a Fine
// amount); the balance engine rounds each charge down to whole units and
// carries the sub-unit remainder per customer account, so that the sum of N
// charges never drifts from the exact sum by more than one smallest unit.
// No binary floating point is used anywhere in this package.
package meter
