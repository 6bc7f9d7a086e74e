//! The GitLab side: the Runner API client and the job payload.
