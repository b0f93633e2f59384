package agentcoord

import (
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	agentcoordv1 "github.com/agentcoord/agentcoord/clients/go/gen/agentcoord/v1"
)

// requiredTiers maps "/agentcoord.v1.<Service>/<Method>" to the method's required_tier option,
// read once from the generated descriptors: the declaration the server enforces, so there is no
// second table to keep in step (DESIGN.md, "The contract").
var requiredTiers = sync.OnceValue(func() map[string]agentcoordv1.AccessTier {
	tiers := map[string]agentcoordv1.AccessTier{}
	// Importing agentcoordv1 registered every file of the package in the global registry.
	protoregistry.GlobalFiles.RangeFilesByPackage("agentcoord.v1", func(file protoreflect.FileDescriptor) bool {
		services := file.Services()
		for i := range services.Len() {
			service := services.Get(i)
			methods := service.Methods()
			for j := range methods.Len() {
				method := methods.Get(j)
				tier, _ := proto.GetExtension(method.Options(), agentcoordv1.E_RequiredTier).(agentcoordv1.AccessTier)
				tiers["/"+string(service.FullName())+"/"+string(method.Name())] = tier
			}
		}
		return true
	})
	return tiers
})

// RequiredTier returns the tier the contract's required_tier option declares for a full method
// name such as "/agentcoord.v1.MemoryService/Stash", or ACCESS_TIER_UNSPECIFIED for a method
// that is not agentcoord's (e.g. grpc.health.v1).
func RequiredTier(fullMethod string) agentcoordv1.AccessTier {
	return requiredTiers()[fullMethod]
}
