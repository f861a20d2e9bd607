-- Claiming reads only pending lines: an index of just those keeps each claim from wading
-- through the lines other replicas are running. Lapsed claims are put back to pending by a
-- separate sweep, found through the second index.
CREATE INDEX batch_requests_pending ON batch_requests (batch_id, line) WHERE state = 'pending';
CREATE INDEX batch_requests_running_leases ON batch_requests (lease_until) WHERE state = 'running';
