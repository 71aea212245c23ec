package ingest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// codeArgs names the functions that take an error code, and which argument
// it is, across the packages whose errors reach an HTTP answer.
var codeArgs = map[string]int{
	"errf":             0, // meter
	"Errorf":           0, // balance/wallet
	"badRequest":       0, // ingest
	"reqErr":           1, // ingest decoder
	"writeError":       1, // ingest
	"writeErrorStatus": 2, // ingest
}

// sourceCodes returns every error code written in the non-test Go files of
// dirs: constants named Code*, code arguments of the functions above given
// as literals or constants, and Code: fields of composite literals.
func sourceCodes(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	codes := map[string]string{}  // code -> where
	consts := map[string]string{} // constants of every dir: wallet's codes are used by balance
	var parsed []*ast.File
	fset := token.NewFileSet()
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(fset, f, src, 0)
			if err != nil {
				t.Fatal(err)
			}
			parsed = append(parsed, af)
			ast.Inspect(af, func(n ast.Node) bool {
				vs, ok := n.(*ast.ValueSpec)
				if !ok {
					return true
				}
				for i, name := range vs.Names {
					if i < len(vs.Values) && strings.HasPrefix(name.Name, "Code") {
						if s, ok := stringLit(vs.Values[i]); ok {
							consts[name.Name] = s
							codes[s] = fset.Position(name.Pos()).String()
						}
					}
				}
				return true
			})
		}
	}
	value := func(e ast.Expr) (string, bool) {
		if s, ok := stringLit(e); ok {
			return s, true
		}
		var name string
		switch x := e.(type) {
		case *ast.Ident:
			name = x.Name
		case *ast.SelectorExpr:
			name = x.Sel.Name
		}
		s, ok := consts[name]
		return s, ok
	}
	for _, af := range parsed {
		ast.Inspect(af, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.CallExpr:
				var name string
				switch f := x.Fun.(type) {
				case *ast.Ident:
					name = f.Name
				case *ast.SelectorExpr:
					if pkg, ok := f.X.(*ast.Ident); ok && pkg.Name == "wallet" {
						name = f.Sel.Name // not fmt.Errorf
					}
				}
				if i, ok := codeArgs[name]; ok && i < len(x.Args) {
					if s, ok := value(x.Args[i]); ok {
						codes[s] = fset.Position(x.Pos()).String()
					}
				}
			case *ast.KeyValueExpr:
				if k, ok := x.Key.(*ast.Ident); ok && k.Name == "Code" {
					if s, ok := value(x.Value); ok {
						codes[s] = fset.Position(x.Pos()).String()
					}
				}
			}
			return true
		})
	}
	return codes
}

func stringLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}

// TestEveryCodeHasAStatus fails when the server can produce an error code
// that codeStatus does not map: such a code would be answered 500.
func TestEveryCodeHasAStatus(t *testing.T) {
	codes := sourceCodes(t, ".", "../balance", "../balance/wallet", "../meter")
	// The reader must see the codes of each package, or it proves nothing.
	for _, want := range []string{"field_too_long", "metadata_too_large", "too_many_balance_alerts",
		"too_many_credit_limits", "insufficient_funds", "clock_backwards", "invalid_pricing", "too_many_events"} {
		if _, ok := codes[want]; !ok {
			t.Errorf("the source reader did not find code %q; it is broken", want)
		}
	}
	var missing []string
	for code, where := range codes {
		if _, ok := codeStatus[code]; !ok {
			missing = append(missing, code+" ("+where+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("error code %s has no HTTP status in codeStatus (ingest/codes.go)", m)
	}
	for code, st := range codeStatus {
		if st < 400 || st > 599 {
			t.Errorf("code %q maps to %d, not an error status", code, st)
		}
	}
}
