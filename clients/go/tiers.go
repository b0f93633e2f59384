package agentcoord

import (
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// methodOptionsOnce reads, once, from the generated descriptors each
// "/agentcoord.v1.<Service>/<Method>"'s required_tier option and whether it declares
// (agentcoord.v1.operator_callable) = true: the declarations the server enforces, so there is no
// second table to keep in step (DESIGN.md, "The contract").
var methodOptionsOnce = sync.OnceValues(methodOptions)

func methodOptions() (map[string]agentcoordv1.AccessTier, map[string]bool) {
	tiers := map[string]agentcoordv1.AccessTier{}
	callable := map[string]bool{}
	// Importing agentcoordv1 registered every file of the package in the global registry.
	protoregistry.GlobalFiles.RangeFilesByPackage("agentcoord.v1", func(file protoreflect.FileDescriptor) bool {
		services := file.Services()
		for i := range services.Len() {
			service := services.Get(i)
			methods := service.Methods()
			for j := range methods.Len() {
				method := methods.Get(j)
				path := "/" + string(service.FullName()) + "/" + string(method.Name())
				tier, _ := proto.GetExtension(method.Options(), agentcoordv1.E_RequiredTier).(agentcoordv1.AccessTier)
				tiers[path] = tier
				if ok, _ := proto.GetExtension(method.Options(), agentcoordv1.E_OperatorCallable).(bool); ok {
					callable[path] = true
				}
			}
		}
		return true
	})
	return tiers, callable
}

// RequiredTier returns the tier the contract's required_tier option declares for a full method
// name such as "/agentcoord.v1.MemoryService/Stash", or ACCESS_TIER_UNSPECIFIED for a method
// that is not agentcoord's (e.g. grpc.health.v1).
func RequiredTier(fullMethod string) agentcoordv1.AccessTier {
	tiers, _ := methodOptionsOnce()
	return tiers[fullMethod]
}

// OperatorCallable reports whether a full method name declares (agentcoord.v1.operator_callable):
// besides the OPERATOR-only methods, the only ones an OPERATOR principal may call.
func OperatorCallable(fullMethod string) bool {
	_, callable := methodOptionsOnce()
	return callable[fullMethod]
}

// refusal applies the contract's rule (access.proto, AccessTier): the OPERATOR calls exactly the
// OPERATOR-only and operator_callable methods, every other tier those its tier reaches. nil: allowed.
func refusal(method string, own agentcoordv1.AccessTier) *Error {
	required := RequiredTier(method)
	if own == agentcoordv1.AccessTier_ACCESS_TIER_OPERATOR {
		if required == own || OperatorCallable(method) {
			return nil
		}
		return operatorDataAccess(method, required)
	}
	if required > own {
		return tierTooLow(method, required, own)
	}
	return nil
}
