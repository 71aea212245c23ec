package ingest

import (
	"bytes"
	"reflect"
	"strings"

	"github.com/meterd/meterd/meter/strictjson"
)

// decodeStrict decodes the JSON object body into v, a pointer to one of the
// request structs, as the contract reads every request body: a key given
// twice, a key in another case than documented, an unknown key, invalid
// UTF-8 and an unpaired UTF-16 surrogate escape are 400 invalid_request
// naming the field, at every depth, including inside values kept raw
// (json.RawMessage: plan, auto_reload, metadata, amounts). So a body has one
// meaning, the same for meterd and for any strict reader in front of it.
// A body that is not JSON is 400 malformed_json.
func decodeStrict(body []byte, v any) error {
	switch t := bytes.TrimSpace(body); {
	case len(t) == 0:
		return badRequest("malformed_json", "", "the request body is empty; a JSON object is expected")
	case string(t) == "null": // which Unmarshal would take for an empty object
		return badRequest("invalid_request", "", "the body must be a JSON object, not null")
	}
	if err := strictjson.Unmarshal(body, v); err != nil {
		return strictError(body, err, "")
	}
	return nil
}

// decodeStrictAt decodes raw, the value of the member at path of a body
// that decodeStrict already read, into v, refusing what decodeStrict
// refuses; errors name their fields under path.
func decodeStrictAt(path string, raw []byte, v any) error {
	if err := strictjson.Unmarshal(raw, v); err != nil {
		return strictError(raw, err, path)
	}
	return nil
}

// checkStrictAt checks that raw, the value of the member at path, is strict
// JSON (see decodeStrict) without decoding it.
func checkStrictAt(path string, raw []byte) error {
	if err := strictjson.Valid(raw); err != nil {
		return strictError(raw, err, path)
	}
	return nil
}

// strictError translates an error of strictjson on body, the value of the
// member at path ("" for a request body), into the contract's error.
func strictError(body []byte, err error, path string) *apiError {
	p := strictjson.Explain(body, err)
	switch {
	case path == "":
	case p.Path == "":
		p.Path = path
	case p.Path[0] == '[':
		p.Path = path + p.Path
	default:
		p.Path = path + "." + p.Path
	}
	switch p.Kind {
	case strictjson.Duplicate:
		return badRequest("invalid_request", p.Path, "%q is given more than once; a key may appear only once in an object", p.Path)
	case strictjson.InvalidText:
		return badRequest("invalid_request", p.Path, "%s is not valid UTF-8 (or holds an unpaired UTF-16 surrogate escape)", orBody(p.Path))
	case strictjson.UnknownName:
		if known := knownName(p.GoType, p.Name); known != "" {
			return badRequest("invalid_request", p.Path, "unknown field %q: field names are case-sensitive; did you mean %q?", p.Path, known)
		}
		return badRequest("invalid_request", p.Path, "unknown field %q", p.Path)
	case strictjson.WrongType:
		kind := "value"
		if p.GoType != nil {
			kind = jsonKind(p.GoType.String())
		}
		return badRequest("invalid_request", p.Path, "%s must be a JSON %s", orBody(p.Path), kind)
	}
	return badRequest("malformed_json", "", "malformed JSON at byte %d: %v", p.Offset, p.Err)
}

// knownName returns the JSON name of a member of struct t that equals name
// but for case, or "".
func knownName(t reflect.Type, name string) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return ""
	}
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if tag != "" && tag != "-" && strings.EqualFold(tag, name) {
			return tag
		}
	}
	return ""
}

func orBody(field string) string {
	if field == "" {
		return "the body"
	}
	return field
}

func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "map"), strings.HasPrefix(goType, "struct"), strings.HasPrefix(goType, "ingest."):
		return "object"
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case goType == "string", goType == "json.Number":
		return "string"
	case goType == "bool":
		return "boolean"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "integer"
	}
	return "value of type " + goType
}
