package main

// Server reflection (grpc.reflection.v1alpha) for the one service the gateway
// proxies to this back-end, echo.Echo, so that the gateway learns each method's
// kind (Say unary, Chat bidi) and relays Say through its unary path. The file
// that describes it is built here (no generated code):
//
//	syntax = "proto3";
//	package echo;
//	message Msg { string id = 1; string text = 2; }
//	service Echo {
//	  rpc Say(Msg) returns (Msg);
//	  rpc Chat(stream Msg) returns (stream Msg);
//	}
//
// dialog.backend.v1.Backend and grpc.health.v1.Health are not listed: the
// gateway never proxies them.

import (
	"io"

	"github.com/golang/protobuf/proto"
	dpb "github.com/golang/protobuf/protoc-gen-go/descriptor"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

const (
	echoService = "echo.Echo"
	echoFile    = "echo.proto"
)

// echoDescriptor is echo.proto's FileDescriptorProto in wire form.
var echoDescriptor = mustMarshal(&dpb.FileDescriptorProto{
	Name:    proto.String(echoFile),
	Package: proto.String("echo"),
	Syntax:  proto.String("proto3"),
	MessageType: []*dpb.DescriptorProto{{
		Name: proto.String("Msg"),
		Field: []*dpb.FieldDescriptorProto{
			stringField("id", 1),
			stringField("text", 2),
		},
	}},
	Service: []*dpb.ServiceDescriptorProto{{
		Name: proto.String("Echo"),
		Method: []*dpb.MethodDescriptorProto{
			{
				Name:       proto.String("Say"),
				InputType:  proto.String(".echo.Msg"),
				OutputType: proto.String(".echo.Msg"),
			},
			{
				Name:            proto.String("Chat"),
				InputType:       proto.String(".echo.Msg"),
				OutputType:      proto.String(".echo.Msg"),
				ClientStreaming: proto.Bool(true),
				ServerStreaming: proto.Bool(true),
			},
		},
	}},
})

// echoSymbols are the fully-qualified names echo.proto defines.
var echoSymbols = map[string]bool{
	"echo.Msg": true, echoService: true, echoService + ".Say": true, echoService + ".Chat": true,
}

func stringField(name string, number int32) *dpb.FieldDescriptorProto {
	return &dpb.FieldDescriptorProto{
		Name:     proto.String(name),
		JsonName: proto.String(name),
		Number:   proto.Int32(number),
		Label:    dpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		Type:     dpb.FieldDescriptorProto_TYPE_STRING.Enum(),
	}
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// reflection answers ServerReflectionInfo from echo.proto alone.
type reflection struct {
	rpb.UnimplementedServerReflectionServer
}

func (reflection) ServerReflectionInfo(stream rpb.ServerReflection_ServerReflectionInfoServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if err := stream.Send(reflectionAnswer(req)); err != nil {
			return err
		}
	}
}

func reflectionAnswer(req *rpb.ServerReflectionRequest) *rpb.ServerReflectionResponse {
	out := &rpb.ServerReflectionResponse{ValidHost: req.Host, OriginalRequest: req}
	found := false
	switch r := req.MessageRequest.(type) {
	case *rpb.ServerReflectionRequest_ListServices:
		out.MessageResponse = &rpb.ServerReflectionResponse_ListServicesResponse{
			ListServicesResponse: &rpb.ListServiceResponse{
				Service: []*rpb.ServiceResponse{{Name: echoService}},
			},
		}
		return out
	case *rpb.ServerReflectionRequest_FileByFilename:
		found = r.FileByFilename == echoFile
	case *rpb.ServerReflectionRequest_FileContainingSymbol:
		found = echoSymbols[r.FileContainingSymbol]
	}
	if !found { // an unknown file or symbol, or a question about extensions (echo.proto has none)
		out.MessageResponse = &rpb.ServerReflectionResponse_ErrorResponse{
			ErrorResponse: &rpb.ErrorResponse{
				ErrorCode:    int32(codes.NotFound),
				ErrorMessage: "not found",
			},
		}
		return out
	}
	out.MessageResponse = &rpb.ServerReflectionResponse_FileDescriptorResponse{
		FileDescriptorResponse: &rpb.FileDescriptorResponse{FileDescriptorProto: [][]byte{echoDescriptor}},
	}
	return out
}

// reflectionV1Path is the same service under grpc.reflection.v1 (the same messages
// on the wire); the Debian grpc has no package for it, so handle routes it here.
const reflectionV1Path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

func registerReflection(server *grpc.Server) {
	rpb.RegisterServerReflectionServer(server, reflection{})
}

// reflectionStream gives a raw server stream the typed methods of the v1alpha one.
type reflectionStream struct{ grpc.ServerStream }

func (s reflectionStream) Send(m *rpb.ServerReflectionResponse) error { return s.SendMsg(m) }

func (s reflectionStream) Recv() (*rpb.ServerReflectionRequest, error) {
	m := new(rpb.ServerReflectionRequest)
	if err := s.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

func reflectionV1(stream grpc.ServerStream) error {
	return reflection{}.ServerReflectionInfo(reflectionStream{stream})
}
