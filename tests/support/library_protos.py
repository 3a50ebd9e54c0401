"""A demo back-end service, ``demo.v1.Library``, whose ``google.api.http`` rules exercise the
transcoder: nested and multi-segment variables, ``**``, verbs, custom methods, additional
bindings, ``body`` and ``response_body``, every kind of query parameter, streaming methods,
and broken rules. Compiled once with protoc (grpcio-tools), as a back-end's reflection would
describe it."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from gateway.grpc.descriptors import GATEWAY, Catalog, DescriptorSet, merge
from gateway.transcode.table import TranscodingTable, compile_table

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "demo.v1.Library"
BACKEND = "library"
SOURCE = """
syntax = "proto3";
package demo.v1;

import "google/api/annotations.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
  COLOR_BLUE = 2;
}

message Address { string city = 1; }
message Author { string id = 1; string display_name = 2; Address address = 3; }

message Book {
  string name = 1;
  string title = 2;
  int64 pages = 3;
  Color color = 4;
  repeated string tags = 5;
  Author author = 6;
  google.protobuf.Timestamp published_at = 7;
  map<string, string> labels = 8;
  bytes cover = 9;
}

message Query {
  string shelf = 1;
  int32 page_size = 2;
  repeated int64 ids = 3;
  Color color = 4;
  repeated Color colors = 5;
  bool flag = 6;
  double ratio = 7;
  bytes blob = 8;
  google.protobuf.Timestamp after = 9;
  google.protobuf.Duration within = 10;
  google.protobuf.FieldMask mask = 11;
  google.protobuf.Int32Value limit = 12;
  google.protobuf.BoolValue archived = 13;
  Author author = 14;
  google.protobuf.Struct extra = 15;
  map<string, string> labels = 16;
  repeated Author authors = 17;
  oneof pick {
    string by_name = 18;
    int32 by_number = 19;
  }
}

message QueryReply { repeated Book books = 1; string next = 2; }
message GetBookRequest { string name = 1; }
message UpdateBookRequest { Book book = 1; google.protobuf.FieldMask update_mask = 2; }
message Chunk { bytes data = 1; }

service Library {
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/books/{name}" }
    };
  }
  rpc Search(Query) returns (QueryReply) {
    option (google.api.http) = {get: "/v1/shelves/{shelf}/books" response_body: "books"};
  }
  rpc UpdateBook(UpdateBookRequest) returns (Book) {
    option (google.api.http) = {patch: "/v1/{book.name=shelves/*/books/*}" body: "book"};
  }
  rpc Archive(GetBookRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {post: "/v1/{name=shelves/*/books/*}:archive" body: "*"};
  }
  rpc Files(GetBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/files/{name=**}"};
  }
  rpc Peek(GetBookRequest) returns (Book) {
    option (google.api.http) = {custom: {kind: "HEAD" path: "/v1/books/{name}"}};
  }
  rpc Special(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/books/special"
      additional_bindings { get: "/v1/files/readme" }
    };
  }
  rpc Plain(GetBookRequest) returns (Book);
  rpc Watch(GetBookRequest) returns (stream Book) {
    option (google.api.http) = {get: "/v1/books:watch"};
  }
  rpc Upload(stream Chunk) returns (Book);
  rpc Chat(stream Chunk) returns (stream Chunk);

  // Each of these rules is left out, with a problem that says why.
  rpc BadTemplate(GetBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/{name"};
  }
  rpc BadField(GetBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/x/{missing}"};
  }
  rpc BadBody(GetBookRequest) returns (Book) {
    option (google.api.http) = {post: "/v1/y" body: "nope"};
  }
  rpc GetWithBody(GetBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/z" body: "*"};
  }
  rpc MessageVariable(UpdateBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/w/{book}"};
  }
  rpc Duplicate(GetBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/books/special"};
  }
  rpc NoPattern(GetBookRequest) returns (Book) {
    option (google.api.http) = {body: "*"};
  }
}
"""


@functools.cache
def library_files() -> tuple[bytes, ...]:
    """The serialized files of ``demo.v1.Library`` and of everything it imports."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "demo.proto").write_text(SOURCE)
        out = folder / "set.pb"
        well_known = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{folder}",
            f"-I{ROOT / 'protos'}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            "demo.proto",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on the demo proto")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return tuple(f.SerializeToString() for f in files.file)


def library_catalog() -> Catalog:
    """The merged catalog of a gateway routing ``demo.v1.Library`` to back-end ``library``."""
    learned = DescriptorSet(BACKEND, (SERVICE,), library_files())
    return merge(DescriptorSet(GATEWAY, (), ()), [learned])


@functools.cache
def library_table() -> TranscodingTable:
    return compile_table(library_catalog(), frozenset({"/messages", "/health"}))
