package meter

// SubUnitsPerUnit is how many sub-units make one smallest unit of an asset:
// rating keeps 18 decimal digits below the asset's scale.
const SubUnitsPerUnit uint64 = 1_000_000_000_000_000_000

// Fine is a non-negative exact amount with sub-unit precision:
// Units + Sub/SubUnitsPerUnit smallest units of an asset, Sub < SubUnitsPerUnit.
type Fine struct {
	Units int64
	Sub   uint64
}

// Charge is what one price asks of one event, before the carry.
type Charge struct {
	Account string // "name:ASSET"
	Name    string // account name
	Asset   string
	Scale   uint8
	Amount  Fine
}
