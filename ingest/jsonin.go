package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
)

// decodeStrict decodes a JSON body into v, rejecting unknown fields by name.
func decodeStrict(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("malformed_json", "", "the request body is empty; a JSON object is expected")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			return badRequest("invalid_request", te.Field, "%s must be a JSON %s", orBody(te.Field), jsonKind(te.Type.String()))
		case errors.As(err, &se):
			return badRequest("malformed_json", "", "malformed JSON at byte %d: %v", se.Offset, se)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
			return badRequest("invalid_request", name, "unknown field %q", name)
		}
		return badRequest("malformed_json", "", "malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("malformed_json", "", "unexpected data after the JSON object")
	}
	return nil
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
	}
	return "value of type " + goType
}
