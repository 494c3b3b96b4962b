-- Argo CD health of a CommerceStack (commerce-stack.dev), read from the
-- status the operator writes. Install it under the key
-- resource.customizations.health.commerce-stack.dev_CommerceStack of the
-- argocd-cm ConfigMap (see the README, "GitOps health").
--
--   Suspended    spec.paused: the operator neither changes nor observes it
--   Progressing  the operator has not observed this generation yet, or it
--                has and the stack is not Ready yet (pods starting, a
--                rollout, topics and databases being created)
--   Degraded     Degraded=True: an invalid spec, objects the API server
--                refused or that the stack does not own, infrastructure
--                that cannot be reached, a missing StorageClass
--   Healthy      Ready=True for the current generation
local hs = {}

local function condition(kind)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == kind then
        return c
      end
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

local paused = condition("Paused")
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(paused)
  return hs
end

local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil
    or (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "waiting for the Ready condition"
end
return hs
