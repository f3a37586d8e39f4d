-- Argo CD health check for sftjob.dev/SFTJob (Lua 5.1, as Argo CD runs it).
--
-- Install: the argocd-cm key `resource.customizations.health.sftjob.dev_SFTJob`
-- holds this file (see README.md, "GitOps: Argo CD health").
--
-- Reads only what the operator writes to .status: observedGeneration, phase,
-- conditions and progress. The summary conditions (Ready, Reconciling,
-- Stalled) are preferred when present; objects written by older operators
-- have only the phase and the stage conditions, and the phase decides.
--
-- Argo CD opens only the base, table and os libraries for health scripts:
-- no string or math library here (no string.format, no ("x"):method()).

local hs = {status = "Progressing", message = "Waiting for the sftjob operator to report the job's status"}

if obj.status == nil then
  return hs
end
local status = obj.status

-- A spec edit the operator has not acted on yet: the status describes an older spec.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == nil then
  return hs
end

-- Conditions by type (an empty list arrives as an empty table).
local conditions = {}
if type(status.conditions) == "table" then
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type ~= nil then
      conditions[c.type] = c
    end
  end
end

local function isTrue(ctype)
  return conditions[ctype] ~= nil and conditions[ctype].status == "True"
end

local function messageOf(ctype, default)
  local c = conditions[ctype]
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return default
end

-- "Reason: message" of the first of `ctypes` that is present.
local function failure(ctypes)
  for _, ctype in ipairs(ctypes) do
    local c = conditions[ctype]
    if c ~= nil and c.reason ~= nil then
      return c.reason .. ": " .. (c.message or "the job failed")
    end
  end
  return "Failed: the job failed (no reason recorded)"
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = messageOf("Suspended", "Suspended: spec.suspend is true")
  return hs
end

if isTrue("Stalled") or phase == "Failed" then
  hs.status = "Degraded"
  if isTrue("Stalled") then
    hs.message = failure({"Stalled", "Failed"})
  else
    hs.message = failure({"Failed", "Ready"})
  end
  return hs
end

if isTrue("Ready") or phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = messageOf("Ready", messageOf("Succeeded", "The job succeeded."))
  return hs
end

-- Still on its way. Reasons that only report progress; any other reason names a problem.
local ROUTINE = {JobCreated = true, WaitingForQuota = true, Running = true, Passed = true,
                 Completed = true, Suspended = true, PodReplaced = true}

-- The reason and message of what is going on: Reconciling says it; older operators
-- left it on the stage conditions (a definite problem, False, before a wait).
local function current()
  if isTrue("Reconciling") then
    return conditions.Reconciling.reason, conditions.Reconciling.message
  end
  local waiting = nil
  for _, ctype in ipairs({"Training", "SanityChecked"}) do
    local c = conditions[ctype]
    if c ~= nil and c.status == "False" then
      return c.reason, c.message
    end
    if c ~= nil and c.status ~= "True" and waiting == nil then
      waiting = c
    end
  end
  if waiting ~= nil then
    return waiting.reason, waiting.message
  end
  return nil, nil
end

-- "step 120/300, loss 1.23, eval loss 1.31, ETA 5m 00s", or nil without a step.
local function progressText(p)
  if type(p) ~= "table" or p.step == nil then
    return nil
  end
  local parts = {}
  if p.totalSteps ~= nil then
    table.insert(parts, "step " .. tostring(p.step) .. "/" .. tostring(p.totalSteps))
  else
    table.insert(parts, "step " .. tostring(p.step))
  end
  if p.loss ~= nil then
    table.insert(parts, "loss " .. tostring(p.loss))
  end
  if p.evalLoss ~= nil then
    table.insert(parts, "eval loss " .. tostring(p.evalLoss))
  end
  if p.eta ~= nil then
    table.insert(parts, "ETA " .. p.eta)
  end
  return table.concat(parts, ", ")
end

local reason, message = current()
local progress = nil
if phase == "Training" or phase == "SanityChecking" then
  progress = progressText(status.progress)
end
if reason ~= nil and reason ~= phase and not ROUTINE[reason] then
  hs.message = phase .. " (" .. reason .. "): " .. (message or "")
elseif progress ~= nil then
  hs.message = phase .. ": " .. progress
elseif message ~= nil and message ~= "" then
  hs.message = phase .. ": " .. message
else
  hs.message = phase
end
return hs
