"""The SDK agents use: the client and the topic router."""
