"""Off-site replicas: copies of verified backups and of the journal on another disk, an SFTP
host or S3-compatible storage, so losing the host loses at most the last shipping interval.

urls: what a `replica` setting may say. targets: one small client per kind of target.
objects: how backups and journal records are named and framed there. ship: what the supervisor
sends. pull: restore and the drill, which read it back.
"""
