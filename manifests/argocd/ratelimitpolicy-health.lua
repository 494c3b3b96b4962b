-- Argo CD health of a RateLimitPolicy (commerce-stack.dev), read from its
-- Accepted condition. Install it under the key
-- resource.customizations.health.commerce-stack.dev_RateLimitPolicy of the
-- argocd-cm ConfigMap (see the README, "GitOps health").
--
--   Healthy      Accepted=True: the stack's gateway carries the rules
--   Degraded     Accepted=False: no such stack, invalid or too large rules,
--                no room left in the stack's rules budget, no gateway, the
--                stack paused or invalid (the reason says which)
--   Progressing  not judged yet for this generation, or Accepted=Unknown
--                (the rules could not be written yet)
local hs = { status = "Progressing", message = "waiting for the operator to judge the policy" }
local generation = obj.metadata.generation
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Accepted" then
    if generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
      return hs
    end
    local message = c.reason or "Accepted"
    if c.message ~= nil and c.message ~= "" then
      message = message .. ": " .. c.message
    end
    if c.status == "True" then
      return { status = "Healthy", message = message }
    elseif c.status == "False" then
      return { status = "Degraded", message = message }
    end
    hs.message = message
  end
end
return hs
