"""Many conversations in one forward pass: the batching the codec and Moshi layers share.

`gather` collects the steps that many threads ask for at once and runs them as one batch; `slots`
rents out the rows of one batched streaming state, one row per conversation.
"""
